//! Build checks: each rule fires where BuildKit's does (positive case, with BuildKit's message)
//! and not where it does not (negative case); the `# check=` directive, per-instruction
//! comments, `BUILDKIT_DOCKERFILE_CHECK` and `--target` decide what runs.

use strata_recipe::check::{self, CheckOptions};
use strata_recipe::{parse, BuildArgs, CheckReport, DockerIgnore, ParseErrorKind};

fn report_with(src: &str, opts: &CheckOptions<'_>) -> CheckReport {
    let recipe = parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"));
    check::run(&recipe, opts).unwrap_or_else(|e| panic!("{src:?}: {e}"))
}

fn report(src: &str) -> CheckReport {
    report_with(src, &CheckOptions::default())
}

/// `(rule, line, message)` of every warning.
fn found(src: &str) -> Vec<(&'static str, usize, String)> {
    found_in(&report(src))
}

fn found_in(r: &CheckReport) -> Vec<(&'static str, usize, String)> {
    r.warnings.iter().map(|w| (w.rule, w.span.line, w.message.clone())).collect()
}

/// Warnings of one rule only, as `(line, message)`.
fn of(rule: &str, src: &str) -> Vec<(usize, String)> {
    found(src).into_iter().filter(|w| w.0 == rule).map(|w| (w.1, w.2)).collect()
}

fn one(line: usize, message: &str) -> Vec<(usize, String)> {
    vec![(line, message.to_string())]
}

#[test]
fn stage_name_casing() {
    assert_eq!(
        of("StageNameCasing", "FROM alpine AS Builder\n"),
        one(1, "Stage name 'Builder' should be lowercase")
    );
    assert!(of("StageNameCasing", "FROM alpine AS builder\n").is_empty());
}

#[test]
fn from_as_casing() {
    assert_eq!(
        of("FromAsCasing", "FROM alpine as builder\n"),
        one(1, "'as' and 'FROM' keywords' casing do not match")
    );
    assert_eq!(
        of("FromAsCasing", "from alpine AS builder\n"),
        one(1, "'AS' and 'from' keywords' casing do not match")
    );
    for ok in ["FROM alpine AS b\n", "from alpine as b\n", "From alpine as b\n", "FROM alpine\n"] {
        assert!(of("FromAsCasing", ok).is_empty(), "{ok}");
    }
}

#[test]
fn no_empty_continuation() {
    assert_eq!(
        of("NoEmptyContinuation", "FROM alpine\nRUN echo a \\\n\n  b\n"),
        one(4, "Empty continuation line")
    );
    assert!(of("NoEmptyContinuation", "FROM alpine\nRUN echo a \\\n# note\n  b\n").is_empty());
}

#[test]
fn consistent_instruction_casing() {
    let src = "arg v=1\nFROM alpine\nrun echo\nRUN echo\nRun echo\n";
    assert_eq!(
        of("ConsistentInstructionCasing", src),
        vec![
            (3, "Command 'run' should match the case of the command majority (uppercase)".into()),
            (5, "Command 'Run' should match the case of the command majority (uppercase)".into()),
        ],
        "global ARGs do not count and are not reported"
    );
    let lower = "from alpine\nrun a\nRUN b\nrun c\n";
    assert_eq!(
        of("ConsistentInstructionCasing", lower),
        one(3, "Command 'RUN' should match the case of the command majority (lowercase)")
    );
    assert!(of("ConsistentInstructionCasing", "FROM a\nRUN b\nCMD c\n").is_empty());
}

#[test]
fn duplicate_stage_name() {
    let src = "FROM alpine AS builder\nRUN a\nFROM golang AS Builder\nFROM builder\n";
    assert_eq!(
        of("DuplicateStageName", src),
        one(3, "Duplicate stage name \"builder\", stage names should be unique")
    );
    assert!(of("DuplicateStageName", "FROM a AS one\nFROM b AS two\n").is_empty());
}

#[test]
fn reserved_stage_name() {
    assert_eq!(
        of("ReservedStageName", "FROM alpine AS scratch\nFROM alpine AS context\n"),
        vec![
            (1, "Stage name should not use the same name as reserved stage \"scratch\"".into()),
            (2, "Stage name should not use the same name as reserved stage \"context\"".into()),
        ]
    );
    assert!(of("ReservedStageName", "FROM scratch AS base\n").is_empty());
}

#[test]
fn json_args_recommended() {
    assert_eq!(
        of("JSONArgsRecommended", "FROM alpine\nCMD echo hi\nENTRYPOINT run\n"),
        vec![
            (2, "JSON arguments recommended for CMD to prevent unintended behavior related to OS signals".into()),
            (3, "JSON arguments recommended for ENTRYPOINT to prevent unintended behavior related to OS signals".into()),
        ]
    );
    assert!(of("JSONArgsRecommended", "FROM alpine\nCMD [\"echo\", \"hi\"]\n").is_empty());
    // An explicit SHELL, in the stage or in the stage it is built on, says shell form is meant.
    let shell = "FROM alpine AS base\nSHELL [\"/bin/bash\", \"-c\"]\nFROM base\nCMD echo hi\n";
    assert!(of("JSONArgsRecommended", shell).is_empty());
}

#[test]
fn maintainer_deprecated() {
    assert_eq!(
        of("MaintainerDeprecated", "FROM alpine\nMAINTAINER me@example.org\n"),
        one(2, "Maintainer instruction is deprecated in favor of using label")
    );
    assert!(of("MaintainerDeprecated", "FROM alpine\nLABEL org.opencontainers.image.authors=me\n")
        .is_empty());
}

#[test]
fn undefined_arg_in_from() {
    assert_eq!(
        of("UndefinedArgInFrom", "FROM node:22${VARIANT} AS jsbuilder\n"),
        one(1, "FROM argument 'VARIANT' is not declared")
    );
    assert_eq!(
        of("UndefinedArgInFrom", "ARG VARIANT=-alpine\nFROM node:22${VARAINT}\n"),
        one(2, "FROM argument 'VARAINT' is not declared (did you mean VARIANT?)")
    );
    assert_eq!(
        of("UndefinedArgInFrom", "FROM --platform=$BUILDPLATFROM alpine\n"),
        one(1, "FROM argument 'BUILDPLATFROM' is not declared (did you mean BUILDPLATFORM?)")
    );
    for ok in [
        "ARG VARIANT=-alpine\nFROM node:22${VARIANT}\n",
        "ARG VARIANT\nFROM node:22${VARIANT}\n",
        "FROM --platform=$BUILDPLATFORM alpine\n",
    ] {
        assert!(of("UndefinedArgInFrom", ok).is_empty(), "{ok}");
    }
}

#[test]
fn workdir_relative_path() {
    assert_eq!(
        of("WorkdirRelativePath", "FROM nginx\nWORKDIR usr/share/nginx/html\nWORKDIR more\n"),
        one(
            2,
            "Relative workdir \"usr/share/nginx/html\" can have unexpected results if the base image changes"
        )
    );
    assert!(of("WorkdirRelativePath", "FROM nginx\nWORKDIR /usr/share\nWORKDIR nginx\n").is_empty());
    let inherited = "FROM alpine AS base\nWORKDIR /app\nFROM base\nWORKDIR src\n";
    assert!(of("WorkdirRelativePath", inherited).is_empty());
}

#[test]
fn undefined_var() {
    assert_eq!(
        of("UndefinedVar", "FROM scratch AS base\nCOPY $foo .\n"),
        one(2, "Usage of undefined variable '$foo'")
    );
    assert_eq!(
        of("UndefinedVar", "FROM scratch\nENV PATH=$PAHT:/app/bin\n"),
        one(2, "Usage of undefined variable '$PAHT' (did you mean $PATH?)")
    );
    assert_eq!(
        of("UndefinedVar", "FROM scratch\nARG VERSION=${foo:-1}\n"),
        one(2, "Usage of undefined variable '$foo'"),
        "a default-value form still reads the variable"
    );
    for ok in [
        "FROM scratch\nARG foo\nCOPY $foo .\n",
        "FROM scratch\nENV foo=a\nCOPY $foo .\n",
        "FROM scratch\nRUN echo $foo\n",
        "FROM scratch AS a\nARG foo\nFROM a\nCOPY $foo .\n",
        // The base image's environment is not known: it may define the variable.
        "FROM python\nENV PATH=/x:$PYTHON_HOME\n",
    ] {
        assert!(of("UndefinedVar", ok).is_empty(), "{ok}");
    }
    // With the base image's environment known, its variables are defined and others are not.
    let env = |r: &str| (r == "python").then(|| vec![("PYTHON_VERSION".into(), "3.12".into())]);
    let opts = CheckOptions { base_env: Some(&env), ..CheckOptions::default() };
    let src = "FROM python\nENV A=$PYTHON_VERSION B=$PYTHON_VERSON\n";
    let r = report_with(src, &opts);
    assert_eq!(
        found_in(&r),
        vec![(
            "UndefinedVar",
            2,
            "Usage of undefined variable '$PYTHON_VERSON' (did you mean $PYTHON_VERSION?)".into()
        )]
    );
}

#[test]
fn multiple_instructions_disallowed() {
    let src = "FROM alpine\nCMD [\"a\"]\nHEALTHCHECK NONE\nCMD [\"b\"]\nHEALTHCHECK NONE\n";
    assert_eq!(
        of("MultipleInstructionsDisallowed", src),
        vec![
            (2, "Multiple CMD instructions should not be used in the same stage because only the last one will be used".into()),
            (3, "Multiple HEALTHCHECK instructions should not be used in the same stage because only the last one will be used".into()),
        ],
        "the one reported is the one that is ignored"
    );
    let stages = "FROM alpine AS a\nENTRYPOINT [\"a\"]\nFROM a\nENTRYPOINT [\"b\"]\n";
    assert!(of("MultipleInstructionsDisallowed", stages).is_empty());
}

#[test]
fn legacy_key_value_format() {
    assert_eq!(
        of("LegacyKeyValueFormat", "FROM alpine\nENV key value\nLABEL a b c\n"),
        vec![
            (
                2,
                "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format"
                    .into()
            ),
            (
                3,
                "\"LABEL key=value\" should be used instead of legacy \"LABEL key value\" format"
                    .into()
            ),
        ]
    );
    assert!(of("LegacyKeyValueFormat", "FROM alpine\nENV key=value\nLABEL a=\"b c\"\n").is_empty());
}

#[test]
fn redundant_target_platform() {
    assert_eq!(
        of("RedundantTargetPlatform", "FROM --platform=$TARGETPLATFORM alpine\n"),
        one(1, "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior")
    );
    assert!(of("RedundantTargetPlatform", "FROM --platform=$BUILDPLATFORM alpine\n").is_empty());
}

#[test]
fn secrets_used_in_arg_or_env() {
    let src = "ARG GLOBAL_TOKEN\nFROM alpine\nARG AWS_SECRET_ACCESS_KEY\nENV DB_PASSWORD=x \
               PUBLIC_KEY=y GITHUB_TOKEN_FILE=/run/t MONKEY=1 apikey=z\n";
    assert_eq!(
        of("SecretsUsedInArgOrEnv", src),
        vec![
            (3, "Do not use ARG or ENV instructions for sensitive data (ARG \"AWS_SECRET_ACCESS_KEY\")".into()),
            (4, "Do not use ARG or ENV instructions for sensitive data (ENV \"DB_PASSWORD\")".into()),
            (4, "Do not use ARG or ENV instructions for sensitive data (ENV \"apikey\")".into()),
        ]
    );
}

#[test]
fn invalid_default_arg_in_from() {
    assert_eq!(
        of("InvalidDefaultArgInFrom", "ARG TAG\nFROM busybox:${TAG}\n"),
        one(2, "Default value for ARG busybox:${TAG} results in empty or invalid base image name")
    );
    for ok in [
        "ARG TAG=latest\nFROM busybox:${TAG}\n",
        "ARG VARIANT\nFROM busybox:stable${VARIANT}\n",
        "ARG TAG\nFROM alpine:${TAG:-3.14}\n",
        "FROM oci:/srv/layout:app\n",
    ] {
        assert!(of("InvalidDefaultArgInFrom", ok).is_empty(), "{ok}");
    }
    // A --build-arg does not help: the recipe must build without one.
    let args: BuildArgs = [("TAG", "1.36")].into_iter().collect();
    let r = report_with(
        "ARG TAG\nFROM busybox:${TAG}\n",
        &CheckOptions { build_args: args, ..CheckOptions::default() },
    );
    assert_eq!(r.rules_violated(), ["InvalidDefaultArgInFrom"]);
}

#[test]
fn from_platform_flag_const_disallowed() {
    assert_eq!(
        of("FromPlatformFlagConstDisallowed", "FROM --platform=linux/amd64 alpine AS base\n"),
        one(1, "FROM --platform flag should not use constant value \"linux/amd64\"")
    );
    for ok in [
        "FROM --platform=linux/amd64 alpine AS build_amd64\n",
        "FROM --platform=${BUILDPLATFORM} alpine AS base\n",
        "FROM alpine AS base\n",
    ] {
        assert!(of("FromPlatformFlagConstDisallowed", ok).is_empty(), "{ok}");
    }
}

#[test]
fn copy_ignored_file() {
    let ignore = DockerIgnore::parse("*/tmp/*\nsecret.txt\n").unwrap();
    let opts = CheckOptions { ignore: Some(&ignore), ..CheckOptions::default() };
    let src = "FROM alpine AS other\nFROM scratch\nCOPY ./secret.txt /x\nCOPY ok.txt /\n\
               ADD sub/tmp/a /a\nCOPY --from=other secret.txt /y\n";
    assert_eq!(
        found_in(&report_with(src, &opts)),
        vec![
            (
                "CopyIgnoredFile",
                3,
                "Attempting to Copy file \"secret.txt\" that is excluded by .dockerignore".into()
            ),
            (
                "CopyIgnoredFile",
                5,
                "Attempting to Add file \"sub/tmp/a\" that is excluded by .dockerignore".into()
            ),
        ]
    );
    // The whole context counts only when everything is excluded.
    let all = DockerIgnore::parse("*\n").unwrap();
    let opts = CheckOptions { ignore: Some(&all), ..CheckOptions::default() };
    assert_eq!(
        report_with("FROM scratch\nCOPY . /\n", &opts).rules_violated(),
        ["CopyIgnoredFile"]
    );
    // With an exception, exclusion depends on what is below a directory: not checked.
    let exceptions = DockerIgnore::parse("secret.txt\n!keep\n").unwrap();
    let opts = CheckOptions { ignore: Some(&exceptions), ..CheckOptions::default() };
    assert!(report_with("FROM scratch\nCOPY secret.txt /x\n", &opts).warnings.is_empty());
}

#[test]
fn invalid_definition_description_is_experimental() {
    let body = "# a non-descriptive comment\nFROM scratch AS base\n# another one\nARG VERSION=1\n\
                # base2 builds things\nFROM scratch AS base2\n# A and B\nARG A B\n";
    assert!(found(body).is_empty(), "experimental rules do not run by default");
    let src = format!("# check=experimental=InvalidDefinitionDescription\n{body}");
    assert_eq!(
        of("InvalidDefinitionDescription", &src),
        vec![
            (3, "Comment for FROM should follow the format: `# base <description>`".into()),
            (5, "Comment for ARG should follow the format: `# VERSION <description>`".into()),
        ]
    );
    let all = format!("# check=skip=all;experimental=all\n{body}\n# x\nARG A B\n");
    assert_eq!(
        report(&all).rules_violated(),
        ["InvalidDefinitionDescription"],
        "skip=all does not apply to experimental rules"
    );
    let multi = "# check=experimental=all\nFROM scratch\n# something\nARG A B\n";
    assert_eq!(
        of("InvalidDefinitionDescription", multi),
        one(4, "Comment for ARG should follow the format: `# <arg_key> <description>`")
    );
}

#[test]
fn expose_proto_casing() {
    assert_eq!(
        of("ExposeProtoCasing", "FROM alpine\nEXPOSE 80/TCP\n"),
        one(2, "Defined protocol '80/TCP' in EXPOSE instruction should be lowercase")
    );
    assert!(of("ExposeProtoCasing", "FROM alpine\nEXPOSE 80/tcp 53/udp 80\n").is_empty());
}

#[test]
fn expose_invalid_format() {
    assert_eq!(
        of("ExposeInvalidFormat", "FROM alpine\nARG P=8080\nEXPOSE 127.0.0.1:80:80 ${P}:80\n"),
        vec![
            (3, "EXPOSE instruction should not define an IP address or host-port mapping, found '127.0.0.1:80:80'".into()),
            (3, "EXPOSE instruction should not define an IP address or host-port mapping, found '8080:80'".into()),
        ]
    );
    assert!(of("ExposeInvalidFormat", "FROM alpine\nEXPOSE 80 443/udp 8000-8010\n").is_empty());
}

#[test]
fn non_portable_stage_name() {
    assert_eq!(
        of("NonPortableStageName", "FROM alpine AS 1st-stage\nFROM 1st-stage\n"),
        one(1, "Stage name '1st-stage' is accepted by buildah but refused by BuildKit, which allows only [a-z][a-z0-9-_.]*")
    );
    assert!(of("NonPortableStageName", "FROM alpine AS first-stage.v1\n").is_empty());
}

#[test]
fn chown_chmod_after_copy() {
    let src = "FROM alpine\nWORKDIR /app\nCOPY . .\nRUN apk add git && chown -R app:app /app\n";
    assert_eq!(
        of("ChownChmodAfterCopy", src),
        one(4, "RUN chown -R on /app rewrites the files COPY at line 3 added, storing them again in a new layer; use COPY --chown at line 3 instead")
    );
    let chmod = "FROM alpine\nENV SRV=/srv\nADD src $SRV/src\nWORKDIR /srv/src\n\
                 RUN [\"sh\", \"-c\", \"chmod -Rf g=u .\"]\n";
    assert_eq!(
        of("ChownChmodAfterCopy", chmod),
        one(5, "RUN chmod -R on /srv/src rewrites the files ADD at line 3 added, storing them again in a new layer; use ADD --chmod at line 3 instead")
    );
    for ok in [
        "FROM alpine\nCOPY a /app/a\nRUN chown app /app/a\n",
        "FROM alpine\nCOPY a /app/a\nRUN chown -R app /var/cache\n",
        "FROM alpine AS a\nCOPY a /app/a\nFROM a\nRUN chown -R app /app\n",
        "FROM alpine\nRUN chown -R app /app\nCOPY a /app/a\n",
    ] {
        assert!(of("ChownChmodAfterCopy", ok).is_empty(), "{ok}");
    }
}

#[test]
fn copy_context_before_install() {
    let src = "FROM node:22\nWORKDIR /app\nCOPY . .\nRUN npm ci\nRUN npm run build\n";
    assert_eq!(
        of("CopyContextBeforeInstall", src),
        one(3, "COPY at line 3 copies the whole context before `npm ci` at line 4 installs dependencies: any change to any file re-runs the install; copy package.json and package-lock.json first")
    );
    let pip = "FROM python\nCOPY ./ /src\nRUN python -m pip install --no-cache-dir -r /src/requirements.txt\n";
    assert_eq!(of("CopyContextBeforeInstall", pip).len(), 1);
    let apt =
        "FROM debian\nCOPY . /src\nRUN DEBIAN_FRONTEND=noninteractive apt-get install -y curl\n";
    assert!(of("CopyContextBeforeInstall", apt)[0]
        .1
        .ends_with("install system packages before the COPY"));
    for ok in [
        "FROM node\nCOPY package.json package-lock.json ./\nRUN npm ci\nCOPY . .\nRUN npm run build\n",
        "FROM node AS b\nFROM node\nCOPY --from=b . .\nRUN npm ci\n",
        "FROM node AS b\nCOPY . .\nFROM b\nRUN npm ci\n",
    ] {
        assert!(of("CopyContextBeforeInstall", ok).is_empty(), "{ok}");
    }
}

#[test]
fn check_directive_skips_rules() {
    let body = "FROM alpine\nMAINTAINER me\nCMD echo\n";
    assert_eq!(report(body).rules_violated(), ["JSONArgsRecommended", "MaintainerDeprecated"]);
    let src = format!("# check=skip=JSONArgsRecommended, MaintainerDeprecated\n{body}");
    assert!(report(&src).warnings.is_empty());
    let src = format!("# check=skip=all\n{body}");
    assert!(report(&src).warnings.is_empty());
    let r = report(&format!("# check=skip=MaintainerDeprecated\n{body}"));
    assert_eq!(r.rules_violated(), ["JSONArgsRecommended"]);
}

#[test]
fn check_error_directive_fails_builds_with_warnings() {
    let r = report("# check=error=true\nFROM alpine\nCMD echo\n");
    assert!(r.config.error && r.fails_build());
    let r = report("# check=error=true\nFROM alpine\nCMD [\"echo\"]\n");
    assert!(!r.fails_build(), "no warning, nothing fails");
    assert!(!report("FROM alpine\nCMD echo\n").fails_build(), "warnings alone only warn");
    let r = report("# check=skip=JSONArgsRecommended;error=true\nFROM alpine\nCMD echo\n");
    assert!(!r.fails_build());
}

#[test]
fn malformed_check_directive_is_an_error_naming_the_line() {
    for bad in ["# check=skip\n", "# check=error=maybe\n", "# check=silence=all\n"] {
        let src = format!("{bad}FROM alpine\n");
        let e = check::run(&parse(&src).unwrap(), &CheckOptions::default()).unwrap_err();
        assert!(
            matches!(&e.kind, ParseErrorKind::InvalidDirective { name, .. } if name == "check"),
            "{bad}: {e}"
        );
        assert_eq!(e.span.line, 1);
    }
    let args: BuildArgs = [("BUILDKIT_DOCKERFILE_CHECK", "error=sometimes")].into_iter().collect();
    let opts = CheckOptions { build_args: args, ..CheckOptions::default() };
    let e = check::run(&parse("FROM alpine\n").unwrap(), &opts).unwrap_err();
    assert!(
        matches!(&e.kind, ParseErrorKind::InvalidDirective { name, .. } if name == "BUILDKIT_DOCKERFILE_CHECK"),
        "{e}"
    );
}

#[test]
fn check_build_arg_replaces_the_directive() {
    let src = "# check=skip=JSONArgsRecommended\nFROM alpine\nCMD echo\nMAINTAINER me\n";
    let args: BuildArgs = [("BUILDKIT_DOCKERFILE_CHECK", "skip=MaintainerDeprecated;error=true")]
        .into_iter()
        .collect();
    let r = report_with(src, &CheckOptions { build_args: args, ..CheckOptions::default() });
    assert_eq!(r.rules_violated(), ["JSONArgsRecommended"]);
    assert!(r.fails_build());
}

#[test]
fn comment_above_an_instruction_configures_it() {
    let src = "FROM alpine\n# check=skip=JSONArgsRecommended\nCMD echo a\nENTRYPOINT echo b\n";
    assert_eq!(found(src).into_iter().map(|w| w.1).collect::<Vec<_>>(), [4]);
}

#[test]
fn target_limits_the_dispatch_rules_to_the_stages_it_needs() {
    let src = "FROM alpine AS one\nCMD echo one\nFROM alpine AS Two\nCMD echo two\n";
    let all = found(src);
    assert_eq!(all.iter().filter(|w| w.0 == "JSONArgsRecommended").count(), 2);
    let r =
        report_with(src, &CheckOptions { target: Some("one".into()), ..CheckOptions::default() });
    assert_eq!(
        found_in(&r).into_iter().map(|w| (w.0, w.1)).collect::<Vec<_>>(),
        [("JSONArgsRecommended", 2), ("StageNameCasing", 3)],
        "file-wide rules still see every stage"
    );
}

/// A stage the target does not need cannot fail the checks, as it cannot fail the build.
#[test]
fn an_unneeded_stage_that_does_not_expand_is_not_an_error() {
    let src = "FROM scratch AS unused\nCOPY ${X:?required} /\nFROM scratch\nCOPY a /a\n";
    let r = report_with(src, &CheckOptions { target: Some("1".into()), ..CheckOptions::default() });
    assert!(r.warnings.is_empty());
    let e = check::run(&parse(src).unwrap(), &CheckOptions::default()).unwrap_err();
    assert!(matches!(e.kind, ParseErrorKind::RequiredVariable { .. }), "all stages: {e}");
}

#[test]
fn warnings_serialize_in_the_documented_shape() {
    let r = report("FROM alpine\nMAINTAINER me\n");
    let v = serde_json::to_value(&r.warnings[0]).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "rule": "MaintainerDeprecated",
            "description": "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
            "url": "https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/",
            "message": "Maintainer instruction is deprecated in favor of using label",
            "line": 2,
            "column": 1,
        })
    );
    let strata = report("FROM alpine AS 1x\n");
    assert_eq!(serde_json::to_value(&strata.warnings[0]).unwrap()["url"], serde_json::Value::Null);
}

#[test]
fn every_rule_has_a_unique_name_and_buildkit_rules_a_docs_url() {
    let mut names: Vec<&str> = strata_recipe::RULES.iter().map(|r| r.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), strata_recipe::RULES.len());
    for r in strata_recipe::RULES {
        assert_eq!(r.url.is_some(), r.origin == check::Origin::BuildKit, "{}", r.name);
        assert_eq!(check::rule(r.name), Some(r));
    }
}

#[test]
fn a_recipe_that_does_not_form_stages_is_an_error() {
    let e = check::run(&parse("RUN x\nFROM a\n").unwrap(), &CheckOptions::default()).unwrap_err();
    assert!(matches!(e.kind, ParseErrorKind::InstructionBeforeFrom { .. }));
}
