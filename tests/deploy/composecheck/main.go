// composecheck loads a Compose file the way `docker compose config` does, with
// github.com/compose-spec/compose-go/v2 (the loader Docker Compose itself is built on):
// YAML parsing, interpolation of ${VAR} from the environment (and the project's .env
// unless COMPOSE_DISABLE_ENV_FILE=1), validation against the Compose Specification's JSON
// schema, normalization, path resolution and the consistency checks (depends_on,
// networks, volumes, secrets and configs that are referenced must exist).
//
// Usage: composecheck [-project-name NAME] [-all-profiles] COMPOSE_FILE [OVERRIDE_FILE...]
//
// Without -all-profiles the model has the services `docker compose up` starts (those without
// profiles:); with it, every service (as if each profile were enabled).
//
// On success it prints {"project": <the normalized model>, "service_extensions": {service:
// {x-key: value}}, "warnings": [...]} as JSON on stdout and exits 0. On any error it prints the error on stderr and exits 1.
// Warnings are what the loader logs (for example a variable that is not set and has no
// default), so a caller can treat them as failures.
//
// Used by tests/deploy/test_compose.py, which builds it once and caches the binary.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/sirupsen/logrus"
)

// collect keeps every warning the loader logs instead of printing it.
type collect struct{ messages []string }

func (c *collect) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

func (c *collect) Fire(e *logrus.Entry) error {
	c.messages = append(c.messages, strings.TrimSpace(e.Message))
	return nil
}

func main() {
	name := flag.String("project-name", "", "project name (default: the name: key, else the directory of the first file)")
	allProfiles := flag.Bool("all-profiles", false, "enable every profile, so that services with profiles: are loaded too")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: composecheck [-project-name NAME] [-all-profiles] COMPOSE_FILE [OVERRIDE_FILE...]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}

	hook := &collect{}
	logrus.AddHook(hook)
	logrus.SetLevel(logrus.WarnLevel)
	// the hook records them; don't also print them
	logrus.SetOutput(io.Discard)

	fns := []cli.ProjectOptionsFn{
		cli.WithOsEnv,
		cli.WithEnvFiles(),
		cli.WithDotEnv,
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithResolvedPaths(true),
		cli.WithConsistency(true),
	}
	if *name != "" {
		fns = append(fns, cli.WithName(*name))
	}
	if *allProfiles {
		fns = append(fns, cli.WithProfiles([]string{"*"}))
	}
	options, err := cli.NewProjectOptions(flag.Args(), fns...)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	model, err := project.MarshalJSON()
	if err != nil {
		fail(err)
	}
	// the JSON of a service leaves out its x-* keys; they are reported per service here
	extensions := map[string]map[string]any{}
	for name, service := range project.Services {
		if len(service.Extensions) > 0 {
			extensions[name] = service.Extensions
		}
	}
	warnings := hook.messages
	if warnings == nil {
		warnings = []string{}
	}
	out, err := json.MarshalIndent(map[string]any{
		"project":            json.RawMessage(model),
		"service_extensions": extensions,
		"warnings":           warnings,
	}, "", "  ")
	if err != nil {
		fail(err)
	}
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "composecheck: %v\n", err)
	os.Exit(1)
}
