/* The sink's hot loop in C: the records of a fetched Kafka record batch straight into a partition's
 * buffer (sinks/delta/buffer.py `Buffer.accept`), with no Python object per record.
 *
 * Why by hand: aiokafka (and every Kafka client for Python) hands over one Python object per record,
 * and the sink's per-record loop over them, plus creating and freeing them, was about two fifths of
 * its CPU (docs/performance.md). No library turns a record batch into the columns the sink keeps.
 * Optional: without a C compiler the package installs without it and `Buffer.accept` takes the
 * records one by one in Python (tests/unit/test_fetch.py checks both ways give the same buffer).
 * Below the record loop is `split`, which cuts the row images out of the envelopes for the JSON
 * reader (sinks/delta/envelopes.py; tests/unit/test_envelope_split.py).
 *
 * Record layout (Kafka protocol, record batch v2, after decompression):
 *   length varint, attributes int8, timestampDelta varlong, offsetDelta varint,
 *   keyLength varint, key, valueLength varint, value, headerCount varint,
 *   headers: keyLength varint, key (UTF-8), valueLength varint, value. Lengths of -1 mean null.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef const unsigned char *ptr;

/* The four header names the sink reads, set once by `headers()` (from lakeward.core.events). */
typedef struct { PyObject *str; const char *utf8; Py_ssize_t len; } name_t;
static name_t h_pos, h_schema, h_old, h_new; /* the str, and its UTF-8 (kept by the str) */

static int varint(ptr *pp, ptr end, int64_t *out) {
    uint64_t raw = 0;
    int shift = 0;
    ptr p = *pp;
    for (;;) {
        if (p >= end || shift > 63)
            return -1;
        unsigned char b = *p++;
        raw |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            break;
        shift += 7;
    }
    *out = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1); /* zigzag */
    *pp = p;
    return 0;
}

/* A length-prefixed field: its start and length (-1: null). */
static int field(ptr *pp, ptr end, ptr *start, int64_t *len) {
    if (varint(pp, end, len) < 0 || *len < -1 || (*len > 0 && *len > end - *pp))
        return -1;
    *start = *pp;
    if (*len > 0)
        *pp += *len;
    return 0;
}

typedef struct {
    int64_t offset_delta;
    ptr key, value, headers, end;
    int64_t klen, vlen, nheaders;
} record_t;

/* Parse the record at p (headers checked to fit, not decoded). */
static int parse(ptr p, ptr bufend, record_t *r) {
    int64_t len, ts;
    if (varint(&p, bufend, &len) < 0 || len < 1 || len > bufend - p)
        return -1;
    ptr end = p + len;
    p += 1; /* attributes */
    if (varint(&p, end, &ts) < 0 || varint(&p, end, &r->offset_delta) < 0 || field(&p, end, &r->key, &r->klen) < 0
        || field(&p, end, &r->value, &r->vlen) < 0 || varint(&p, end, &r->nheaders) < 0 || r->nheaders < 0)
        return -1;
    r->headers = p;
    for (int64_t h = 0; h < r->nheaders; h++) {
        ptr k, v;
        int64_t kl, vl;
        if (field(&p, end, &k, &kl) < 0 || kl < 0 || field(&p, end, &v, &vl) < 0)
            return -1;
    }
    if (p != end)
        return -1;
    r->end = end;
    return 0;
}

static int is_name(ptr k, int64_t kl, const name_t *name) {
    return name->len == kl && memcmp(k, name->utf8, (size_t)kl) == 0;
}

static PyObject *bytes_or_none(ptr p, int64_t len) {
    if (len < 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)len);
}

static PyObject *corrupt(const char *what) {
    PyErr_Format(PyExc_ValueError, "malformed record in a record batch (%s)", what);
    return NULL;
}

/* headers(position, schema, old_key, new_key): the header names, as core/events.py spells them. */
static int set_name(name_t *name, PyObject *str) {
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(str, &len);
    if (utf8 == NULL)
        return -1;
    Py_INCREF(str);
    Py_XSETREF(name->str, str);
    name->utf8 = utf8;
    name->len = len;
    return 0;
}

static PyObject *set_headers(PyObject *self, PyObject *args) {
    PyObject *a, *b, *c, *d;
    if (!PyArg_ParseTuple(args, "UUUU", &a, &b, &c, &d))
        return NULL;
    if (set_name(&h_pos, a) < 0 || set_name(&h_schema, b) < 0 || set_name(&h_old, c) < 0 || set_name(&h_new, d) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* starts(records, count, base_offset, min_offset) -> bytes: the uint32 start of each record whose
 * offset is at least min_offset, then the end of the last record (native byte order). */
static PyObject *starts(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t count;
    long long base, min_offset;
    if (!PyArg_ParseTuple(args, "y*nLL", &buf, &count, &base, &min_offset))
        return NULL;
    PyObject *out = NULL;
    if (buf.len > (Py_ssize_t)UINT32_MAX || count < 0 || count > buf.len) {
        corrupt("size");
        goto done;
    }
    uint32_t *st = PyMem_Malloc(sizeof(uint32_t) * (size_t)(count + 1));
    if (st == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    ptr p = buf.buf, end = p + buf.len, begin = p;
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        record_t r;
        if (parse(p, end, &r) < 0) {
            PyMem_Free(st);
            corrupt("layout");
            goto done;
        }
        if (base + r.offset_delta >= min_offset)
            st[n++] = (uint32_t)(p - begin);
        p = r.end;
    }
    st[n] = (uint32_t)(p - begin);
    out = PyBytes_FromStringAndSize((const char *)st, (Py_ssize_t)(sizeof(uint32_t) * (size_t)(n + 1)));
    PyMem_Free(st);
done:
    PyBuffer_Release(&buf);
    return out;
}

/* record(records, start, base_offset) -> (offset, key, value, [(header, value), ...]) */
static PyObject *record(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t start;
    long long base;
    if (!PyArg_ParseTuple(args, "y*nL", &buf, &start, &base))
        return NULL;
    PyObject *out = NULL, *key = NULL, *value = NULL, *headers = NULL;
    record_t r;
    ptr begin = buf.buf, end = begin + buf.len;
    if (start < 0 || start >= buf.len || parse(begin + start, end, &r) < 0) {
        corrupt("layout");
        goto done;
    }
    if (!(key = bytes_or_none(r.key, r.klen)) || !(value = bytes_or_none(r.value, r.vlen)) || !(headers = PyList_New(0)))
        goto done;
    ptr p = r.headers;
    for (int64_t h = 0; h < r.nheaders; h++) {
        ptr k, v;
        int64_t kl, vl;
        field(&p, r.end, &k, &kl);
        field(&p, r.end, &v, &vl);
        PyObject *pair = Py_BuildValue("(s#N)", (const char *)k, (Py_ssize_t)kl, bytes_or_none(v, vl));
        if (pair == NULL || PyList_Append(headers, pair) < 0) {
            Py_XDECREF(pair);
            goto done;
        }
        Py_DECREF(pair);
    }
    out = Py_BuildValue("(LOOO)", base + r.offset_delta, key, value, headers);
done:
    Py_XDECREF(key);
    Py_XDECREF(value);
    Py_XDECREF(headers);
    PyBuffer_Release(&buf);
    return out;
}

enum { DONE = 0, FULL = 1, SCHEMA = 2, POISON = 3 };

/* bytes a <= bytes b, as Python compares them */
static int le(ptr a, Py_ssize_t al, PyObject *b) {
    Py_ssize_t bl = PyBytes_GET_SIZE(b);
    int c = memcmp(a, PyBytes_AS_STRING(b), (size_t)(al < bl ? al : bl));
    return c < 0 || (c == 0 && al <= bl);
}

/* accept(records, starts, base_offset, lo, hi, next_offset, last_position, nbytes, last, open_pair,
 *        count, positions, values, keys, event_infos, links, infos, max_rows, max_bytes)
 *   -> (index, stop, arg, next_offset, last_position, nbytes, last, open_pair, duplicates, tombstones, offsets)
 *
 * `Buffer.accept` over the records lo..hi-1 of one batch: the same rules, the same lists appended
 * to (offsets come back as int64 bytes for the caller's array). `last` -1 stands for None; `count`
 * is the number of events already buffered. Stops at a record it cannot take (SCHEMA: arg is the
 * schema id; POISON) without consuming it, or after the one that fills the buffer (FULL). */
static PyObject *accept(PyObject *self, PyObject *args) {
    Py_buffer buf, stb;
    Py_ssize_t lo, hi, count, max_rows, max_bytes, nbytes;
    long long base, nxt, last;
    int open_pair;
    PyObject *last_pos, *positions, *values, *keys, *evinfos, *links, *infos;
    if (!PyArg_ParseTuple(args, "y*y*LnnLOnLpnO!O!O!O!O!O!nn", &buf, &stb, &base, &lo, &hi, &nxt, &last_pos, &nbytes, &last,
                          &open_pair, &count, &PyList_Type, &positions, &PyList_Type, &values, &PyList_Type, &keys,
                          &PyList_Type, &evinfos, &PyDict_Type, &links, &PyDict_Type, &infos, &max_rows, &max_bytes))
        return NULL;
    PyObject *result = NULL, *arg = Py_None, *last_sid = NULL, *last_info = NULL;
    Py_INCREF(arg);
    Py_INCREF(last_pos);
    int64_t *offs = NULL;
    Py_ssize_t noffs = 0, dups = 0, tombs = 0, i = lo;
    int stop = DONE;
    const uint32_t *st = stb.buf;
    ptr begin = buf.buf, end = begin + buf.len;
    if (h_new.str == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_records.headers() was not called");
        goto done;
    }
    if (lo < 0 || hi < lo || (Py_ssize_t)(stb.len / sizeof(uint32_t)) <= hi) {
        PyErr_SetString(PyExc_IndexError, "record index out of range");
        goto done;
    }
    if ((offs = PyMem_Malloc(sizeof(int64_t) * (size_t)(hi - lo + 1))) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; i < hi; i++) {
        record_t r;
        if (st[i] >= (uint32_t)buf.len || parse(begin + st[i], end, &r) < 0) {
            corrupt("layout");
            goto done;
        }
        long long off = base + r.offset_delta;
        if (off < nxt)
            continue; /* fetched again after a seek */
        if (r.vlen < 0) { /* tombstone after a delete (compaction) */
            tombs++;
            nxt = off + 1;
            last = off;
            continue;
        }
        ptr pos = NULL, sid = NULL, link_v = NULL;
        int64_t pos_l = -1, sid_l = -1, link_l = -1;
        PyObject *link_k = NULL;
        ptr p = r.headers;
        for (int64_t h = 0; h < r.nheaders; h++) {
            ptr k, v;
            int64_t kl, vl;
            field(&p, r.end, &k, &kl);
            field(&p, r.end, &v, &vl);
            if (is_name(k, kl, &h_pos)) {
                pos = v; pos_l = vl;
            } else if (is_name(k, kl, &h_schema)) {
                sid = v; sid_l = vl;
            } else if (is_name(k, kl, &h_old)) {
                link_k = h_old.str; link_v = v; link_l = vl;
            } else if (is_name(k, kl, &h_new)) {
                link_k = h_new.str; link_v = v; link_l = vl;
            }
        }
        if (pos_l < 0 || sid_l < 0) {
            stop = POISON;
            break;
        }
        if (last_pos != Py_None && le(pos, (Py_ssize_t)pos_l, last_pos)) {
            dups++;
            nxt = off + 1;
            last = off;
            continue;
        }
        if (last_sid == NULL || PyBytes_GET_SIZE(last_sid) != sid_l || memcmp(PyBytes_AS_STRING(last_sid), sid, (size_t)sid_l) != 0) {
            PyObject *sidb = PyBytes_FromStringAndSize((const char *)sid, (Py_ssize_t)sid_l);
            if (sidb == NULL)
                goto done;
            PyObject *info = PyDict_GetItemWithError(infos, sidb); /* borrowed */
            if (info == NULL) {
                if (PyErr_Occurred()) {
                    Py_DECREF(sidb);
                    goto done;
                }
                Py_SETREF(arg, sidb);
                stop = SCHEMA;
                break;
            }
            Py_XSETREF(last_sid, sidb);
            last_info = info;
        }
        PyObject *posb = PyBytes_FromStringAndSize((const char *)pos, (Py_ssize_t)pos_l);
        PyObject *valb = posb ? PyBytes_FromStringAndSize((const char *)r.value, (Py_ssize_t)r.vlen) : NULL;
        PyObject *keyb = valb ? bytes_or_none(r.key, r.klen) : NULL;
        int failed = keyb == NULL;
        if (!failed && link_k != NULL) {
            PyObject *idx = PyLong_FromSsize_t(count);
            PyObject *pair = idx ? Py_BuildValue("(ON)", link_k, bytes_or_none(link_v, link_l)) : NULL;
            failed = pair == NULL || PyDict_SetItem(links, idx, pair) < 0;
            Py_XDECREF(idx);
            Py_XDECREF(pair);
        }
        failed = failed || PyList_Append(positions, posb) < 0 || PyList_Append(values, valb) < 0
                 || PyList_Append(keys, keyb) < 0 || PyList_Append(evinfos, last_info) < 0;
        Py_XDECREF(valb);
        Py_XDECREF(keyb);
        if (failed) {
            Py_XDECREF(posb);
            goto done; /* the lists may be ragged: the error stops the table, the buffer is dropped */
        }
        Py_SETREF(last_pos, posb);
        offs[noffs++] = off;
        count++;
        nbytes += (Py_ssize_t)r.vlen;
        nxt = off + 1;
        last = off;
        /* The `d` of a key change carries the new key; its `c` (the old key) follows it. */
        open_pair = link_k == h_new.str;
        if ((count >= max_rows || nbytes >= max_bytes) && !open_pair) {
            stop = FULL;
            i++;
            break;
        }
    }
    result = Py_BuildValue("(niOLOnLOnny#)", i, stop, arg, nxt, last_pos, nbytes, last, open_pair ? Py_True : Py_False,
                           dups, tombs, (const char *)offs, (Py_ssize_t)(sizeof(int64_t) * (size_t)noffs));
done:
    PyMem_Free(offs);
    Py_XDECREF(last_sid);
    Py_DECREF(arg);
    Py_DECREF(last_pos);
    PyBuffer_Release(&buf);
    PyBuffer_Release(&stb);
    return result;
}


/* ---- envelopes: the parts of a batch's envelopes the planner reads, cut out without parsing them ----
 *
 * Why by hand: pyarrow's JSON reader (envelopes.py) costs the sink more than anything else, and most
 * of an envelope is its `source` block, which the sink reads two numbers of. Cutting out `before`
 * and `after` as they are lets the reader parse only those. The scan below is strict: it gives up
 * (returns None, and the whole envelopes are read as before) on anything it is not sure of, so it
 * never accepts what the reader would refuse. */

typedef struct { ptr p, end; int depth, any_utf8; } scan_t;
/* any_utf8: strings may hold non-ASCII bytes (inside `before` and `after`, which the reader itself
 * parses and checks); elsewhere the scan gives up on them. */

static void ws(scan_t *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t'))
        s->p++;
}

/* A string (escapes checked; ASCII only unless any_utf8); *plain: no escape in it. */
static int skip_string(scan_t *s, int *plain) {
    if (s->p >= s->end || *s->p != '"')
        return -1;
    s->p++;
    *plain = 1;
    while (s->p < s->end) {
        unsigned char c = *s->p++;
        if (c == '"')
            return 0;
        if (c < 0x20 || (c >= 0x80 && !s->any_utf8))
            return -1;
        if (c == '\\') {
            *plain = 0;
            if (s->p >= s->end)
                return -1;
            c = *s->p++;
            if (c == 'u') {
                for (int k = 0; k < 4; k++, s->p++)
                    if (s->p >= s->end || !((*s->p >= '0' && *s->p <= '9') || ((*s->p | 0x20) >= 'a' && (*s->p | 0x20) <= 'f')))
                        return -1;
            } else if (!strchr("\"\\/bfnrt", c) || c == 0) {
                return -1;
            }
        }
    }
    return -1;
}

static int digits(scan_t *s) {
    ptr start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > start ? 0 : -1;
}

/* A JSON number; *integer: an integer of at most 18 digits, its value in *value. */
static int skip_number(scan_t *s, int *integer, int64_t *value) {
    int neg = s->p < s->end && *s->p == '-';
    if (neg)
        s->p++;
    ptr first = s->p;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (digits(s) < 0)
        return -1;
    Py_ssize_t n = s->p - first;
    *integer = 1;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        *integer = 0;
        if (digits(s) < 0)
            return -1;
    }
    if (s->p < s->end && (*s->p | 0x20) == 'e') {
        s->p++;
        *integer = 0;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (digits(s) < 0)
            return -1;
    }
    if (*integer) {
        if (n > 18) {
            *integer = 0;
        } else {
            int64_t v = 0;
            for (ptr q = first; q < first + n; q++)
                v = v * 10 + (*q - '0');
            *value = neg ? -v : v;
        }
    }
    return 0;
}

static int skip_value(scan_t *s);

static int skip_container(scan_t *s, unsigned char close, int object) {
    if (++s->depth > 64)
        return -1;
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        s->depth--;
        return 0;
    }
    for (;;) {
        int plain;
        if (object) {
            if (skip_string(s, &plain) < 0)
                return -1;
            ws(s);
            if (s->p >= s->end || *s->p++ != ':')
                return -1;
            ws(s);
        }
        if (skip_value(s) < 0)
            return -1;
        ws(s);
        if (s->p >= s->end)
            return -1;
        unsigned char c = *s->p++;
        if (c == close) {
            s->depth--;
            return 0;
        }
        if (c != ',')
            return -1;
        ws(s);
    }
}

static int literal(scan_t *s, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return -1;
    s->p += n;
    return 0;
}

static int skip_value(scan_t *s) {
    if (s->p >= s->end)
        return -1;
    int plain, integer;
    int64_t v;
    switch (*s->p) {
    case '{': return skip_container(s, '}', 1);
    case '[': return skip_container(s, ']', 0);
    case '"': return skip_string(s, &plain);
    case 't': return literal(s, "true");
    case 'f': return literal(s, "false");
    case 'n': return literal(s, "null");
    default: return skip_number(s, &integer, &v);
    }
}

/* A key: a string without escapes; its bytes in *k, *kl. */
static int key(scan_t *s, ptr *k, Py_ssize_t *kl) {
    int plain;
    ptr start = s->p;
    if (skip_string(s, &plain) < 0 || !plain)
        return -1;
    *k = start + 1;
    *kl = s->p - start - 2;
    return 0;
}

#define IS(k, kl, lit) ((kl) == (Py_ssize_t)(sizeof(lit) - 1) && memcmp((k), (lit), sizeof(lit) - 1) == 0)

typedef struct { char *data; Py_ssize_t len, cap; } out_t;

static int put(out_t *o, const void *p, Py_ssize_t n) {
    if (o->len + n > o->cap) {
        Py_ssize_t cap = (o->cap ? o->cap * 2 : 4096);
        while (cap < o->len + n)
            cap *= 2;
        char *d = PyMem_Realloc(o->data, (size_t)cap);
        if (d == NULL)
            return -1;
        o->data = d;
        o->cap = cap;
    }
    memcpy(o->data + o->len, p, (size_t)n);
    o->len += n;
    return 0;
}

/* An object or null at s->p: the object's text to `lines` (then a newline; `{}` for null), its
 * validity to `valid`. */
static int part(scan_t *s, out_t *lines, out_t *valid) {
    ptr start = s->p;
    char ok = 1;
    if (s->p < s->end && *s->p == '{') {
        s->any_utf8 = 1;
        int rc = skip_container(s, '}', 1);
        s->any_utf8 = 0;
        if (rc < 0 || put(lines, start, s->p - start) < 0)
            return -1;
    } else if (literal(s, "null") == 0) {
        ok = 0;
        if (put(lines, "{}", 2) < 0)
            return -1;
    } else {
        return -1;
    }
    return put(lines, "\n", 1) < 0 || put(valid, &ok, 1) < 0 ? -1 : 0;
}

/* An integer or null: to `values` and `valid`. */
static int number_or_null(scan_t *s, out_t *values, out_t *valid, int *seen) {
    int64_t v = 0;
    char ok = 1;
    int integer;
    if (*seen)
        return -1; /* a duplicate key: the reader decides which one counts */
    *seen = 1;
    if (literal(s, "null") == 0)
        ok = 0;
    else if (s->p >= s->end || skip_number(s, &integer, &v) < 0 || !integer)
        return -1;
    return put(values, &v, 8) < 0 || put(valid, &ok, 1) < 0 ? -1 : 0;
}

/* An object's members, for the scan's own keys (no escapes): `members` at its '{' (0: a member
 * follows, 1: the object was empty), `member` for each key and its ':', `next_member` after each
 * value (0: another member follows, 1: the object ended). -1: give up. */
static int members(scan_t *s) {
    if (s->p >= s->end || *s->p != '{')
        return -1;
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 1;
    }
    return 0;
}

static int member(scan_t *s, ptr *k, Py_ssize_t *kl) {
    if (key(s, k, kl) < 0)
        return -1;
    ws(s);
    if (s->p >= s->end || *s->p++ != ':')
        return -1;
    ws(s);
    return 0;
}

static int next_member(scan_t *s) {
    ws(s);
    if (s->p >= s->end)
        return -1;
    unsigned char c = *s->p++;
    if (c == '}')
        return 1;
    if (c != ',')
        return -1;
    ws(s);
    return 0;
}

/* The `source` object (or null): its ts_ms and txId. */
static int source(scan_t *s, out_t *o, int *seen_ts, int *seen_tx) {
    if (literal(s, "null") == 0)
        return 0;
    int rc = members(s);
    s->depth = 2;
    while (rc == 0) {
        ptr k;
        Py_ssize_t kl;
        if (member(s, &k, &kl) < 0)
            return -1;
        if (IS(k, kl, "ts_ms"))
            rc = number_or_null(s, &o[7], &o[8], seen_ts);
        else if (IS(k, kl, "txId"))
            rc = number_or_null(s, &o[9], &o[10], seen_tx);
        else
            rc = skip_value(s);
        if (rc == 0)
            rc = next_member(s);
    }
    s->depth = 1;
    return rc < 0 ? -1 : 0;
}

/* `op`: a string without escapes, or null. */
static int op(scan_t *s, out_t *o) {
    ptr start = s->p;
    char ok = literal(s, "null") != 0;
    int plain;
    if (ok && (skip_string(s, &plain) < 0 || !plain))
        return -1;
    int32_t at;
    if (ok && put(&o[4], start + 1, s->p - start - 2) < 0)
        return -2;
    at = (int32_t)o[4].len;
    return put(&o[5], &ok, 1) < 0 || put(&o[6], &at, 4) < 0 ? -2 : 0;
}

/* One envelope: 0, -1 (give up), -2 (out of memory). */
static int envelope(ptr p, Py_ssize_t len, int want_before, int want_after, out_t *o) {
    scan_t s = {p, p + len, 0, 0};
    int seen_op = 0, seen_before = 0, seen_after = 0, seen_source = 0, seen_ts = 0, seen_tx = 0;
    ws(&s);
    int rc = members(&s);
    s.depth = 1;
    while (rc == 0) {
        ptr k;
        Py_ssize_t kl;
        if (member(&s, &k, &kl) < 0)
            return -1;
        if (IS(k, kl, "op"))
            rc = seen_op++ ? -1 : op(&s, o);
        else if (IS(k, kl, "before") && want_before)
            rc = seen_before++ || part(&s, &o[0], &o[1]) < 0 ? -1 : 0;
        else if (IS(k, kl, "after") && want_after)
            rc = seen_after++ || part(&s, &o[2], &o[3]) < 0 ? -1 : 0;
        else if (IS(k, kl, "source"))
            rc = seen_source++ ? -1 : source(&s, o, &seen_ts, &seen_tx);
        else
            rc = skip_value(&s);
        if (rc == 0)
            rc = next_member(&s);
    }
    if (rc < 0)
        return rc;
    ws(&s);
    if (s.p != s.end)
        return -1;
    /* what an envelope lacks is null */
    char no = 0;
    int64_t zero = 0;
    int32_t at = (int32_t)o[4].len;
    if ((!seen_op && (put(&o[5], &no, 1) < 0 || put(&o[6], &at, 4) < 0))
        || (want_before && !seen_before && (put(&o[0], "{}\n", 3) < 0 || put(&o[1], &no, 1) < 0))
        || (want_after && !seen_after && (put(&o[2], "{}\n", 3) < 0 || put(&o[3], &no, 1) < 0))
        || (!seen_ts && (put(&o[7], &zero, 8) < 0 || put(&o[8], &no, 1) < 0))
        || (!seen_tx && (put(&o[9], &zero, 8) < 0 || put(&o[10], &no, 1) < 0)))
        return -2;
    return 0;
}

/* split(values, want_before, want_after) -> None (give up) or 11 bytes objects:
 *   before lines, before valid, after lines, after valid, op data, op valid, op offsets (int32,
 *   after a leading 0), ts_ms (int64), ts_ms valid, txId (int64), txId valid. Valid: one byte (0/1)
 *   per envelope; lines: one object per line, `{}` where the part is null. */
static PyObject *split(PyObject *self, PyObject *args) {
    PyObject *values;
    int want_before, want_after;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!pp", &PyList_Type, &values, &want_before, &want_after))
        return NULL;
    out_t o[11];
    memset(o, 0, sizeof(o));
    PyObject *result = NULL;
    int32_t zero = 0;
    int rc = put(&o[6], &zero, 4) < 0 ? -2 : 0;
    Py_ssize_t n = PyList_GET_SIZE(values);
    for (Py_ssize_t i = 0; i < n && rc == 0; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        if (!PyBytes_Check(v)) {
            rc = -1;
            break;
        }
        rc = envelope((ptr)PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), want_before, want_after, o);
        if (o[4].len > INT32_MAX)
            rc = -1;
    }
    if (rc == -2) {
        PyErr_NoMemory();
    } else if (rc == -1) {
        Py_INCREF(Py_None);
        result = Py_None;
    } else {
        result = PyTuple_New(11);
        for (int k = 0; result != NULL && k < 11; k++) {
            PyObject *b = PyBytes_FromStringAndSize(o[k].data ? o[k].data : "", o[k].len);
            if (b == NULL)
                Py_CLEAR(result);
            else
                PyTuple_SET_ITEM(result, k, b);
        }
    }
    for (int k = 0; k < 11; k++)
        PyMem_Free(o[k].data);
    return result;
}

static PyMethodDef methods[] = {
    {"headers", set_headers, METH_VARARGS, "Set the names of the position, schema, old-key and new-key headers."},
    {"starts", starts, METH_VARARGS, "The start of each record of a batch at or above an offset, then its end (uint32)."},
    {"record", record, METH_VARARGS, "The record at a start: (offset, key, value, headers)."},
    {"accept", accept, METH_VARARGS, "Buffer.accept over some records of one batch."},
    {"split", split, METH_VARARGS, "The before and after objects, op, ts_ms and txId of envelopes, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_records", NULL, -1, methods};

PyMODINIT_FUNC PyInit__records(void) { return PyModule_Create(&module); }
