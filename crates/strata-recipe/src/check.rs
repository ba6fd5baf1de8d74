//! Build checks: lint rules over a parsed recipe, BuildKit's and strata's own.
//!
//! `docker build --check` runs BuildKit's Dockerfile linter instead of building; this module is
//! that linter. [`run`] walks a [`Recipe`] the way BuildKit's frontend converts one, and every
//! rule fires where BuildKit's does, with its name, description, documentation URL and message:
//! file-wide rules (stage names, instruction casing, empty continuation lines, base names that
//! only build with `--build-arg`) look at every stage; the `FROM` rules at every `FROM`; the
//! rules BuildKit runs while dispatching instructions (undefined variables, JSON arguments,
//! legacy `ENV k v`, secrets in `ARG`/`ENV`, relative `WORKDIR`, `EXPOSE` formats, ignored
//! `COPY` sources...) only at the stages the target needs, all of them when no target is given.
//! strata adds rules of its own ([`Origin::Strata`]): a stage name only buildah accepts, a
//! `RUN chown -R`/`chmod -R` that stores an earlier `COPY`'s files a second time, and a
//! `COPY .` of the whole context before a dependency install. Checks never fail on their own:
//! a recipe that does not parse or form stages is an error, as it is for a build.
//!
//! What runs is configured as in BuildKit ([`CheckConfig`]): the `# check=skip=Rule1,Rule2`
//! (or `skip=all`), `error=true` and `experimental=...` parser directive, replaced as a whole by
//! the build argument `BUILDKIT_DOCKERFILE_CHECK`, and refined for one instruction by a
//! `# check=...` comment directly above it. Experimental rules (`InvalidDefinitionDescription`)
//! run only when named in `experimental=` (or `experimental=all`), and `skip=` does not apply
//! to them. `error=true` makes a build with warnings fail ([`CheckReport::fails_build`]).
//!
//! Nothing here does I/O. What only the caller can know comes in [`CheckOptions`]: the build
//! arguments and target, the parsed `.dockerignore` (for `CopyIgnoredFile`) and the environment
//! of base images (for `UndefinedVar`: a stage whose base image's environment is unknown is
//! not checked for undefined variables, since the image may define them). BuildKit's
//! `InvalidBaseImagePlatform` needs the pulled base image and is not implemented.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashSet};
use std::str::FromStr;

use serde::Serialize;
use strata_types::{ImageLocation, Platform, Reference};

use crate::ast::Node;
use crate::dockerignore::DockerIgnore;
use crate::error::{ParseError, ParseErrorKind, Span};
use crate::instruction::{valid_stage_name, Command, Instruction, Source};
use crate::shell::{Lookup, ShellLexer};
use crate::stage::{builtin_args, Base, BuildArgs, Recipe, Scope, Stage};

/// Who defined a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// One of BuildKit's build checks, under its name.
    BuildKit,
    /// strata's own.
    Strata,
}

/// A check: its name (what `# check=skip=` takes), what it is about, and where it is
/// documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The rule's name, as BuildKit spells it for its rules.
    pub name: &'static str,
    /// One sentence on what the rule wants.
    pub description: &'static str,
    /// BuildKit's documentation page (`https://docs.docker.com/go/dockerfile/rule/<name>/`);
    /// `None` for strata's rules.
    pub url: Option<&'static str>,
    /// BuildKit's or strata's.
    pub origin: Origin,
    /// Runs only when `# check=experimental=` names it.
    pub experimental: bool,
}

macro_rules! buildkit_rule {
    ($ident:ident, $name:literal, $slug:literal, $description:literal) => {
        buildkit_rule!($ident, $name, $slug, $description, false);
    };
    ($ident:ident, $name:literal, $slug:literal, $description:literal, $experimental:literal) => {
        #[doc = concat!("BuildKit's `", $name, "`: ", $description)]
        pub const $ident: Rule = Rule {
            name: $name,
            description: $description,
            url: Some(concat!("https://docs.docker.com/go/dockerfile/rule/", $slug, "/")),
            origin: Origin::BuildKit,
            experimental: $experimental,
        };
    };
}

buildkit_rule!(
    STAGE_NAME_CASING,
    "StageNameCasing",
    "stage-name-casing",
    "Stage names should be lowercase"
);
buildkit_rule!(
    FROM_AS_CASING,
    "FromAsCasing",
    "from-as-casing",
    "The 'as' keyword should match the case of the 'from' keyword"
);
buildkit_rule!(
    NO_EMPTY_CONTINUATION,
    "NoEmptyContinuation",
    "no-empty-continuation",
    "Empty continuation lines will become errors in a future release"
);
buildkit_rule!(
    CONSISTENT_INSTRUCTION_CASING,
    "ConsistentInstructionCasing",
    "consistent-instruction-casing",
    "All commands within the Dockerfile should use the same casing (either upper or lower)"
);
buildkit_rule!(
    DUPLICATE_STAGE_NAME,
    "DuplicateStageName",
    "duplicate-stage-name",
    "Stage names should be unique"
);
buildkit_rule!(
    RESERVED_STAGE_NAME,
    "ReservedStageName",
    "reserved-stage-name",
    "Reserved words should not be used as stage names"
);
buildkit_rule!(
    JSON_ARGS_RECOMMENDED,
    "JSONArgsRecommended",
    "json-args-recommended",
    "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals"
);
buildkit_rule!(
    MAINTAINER_DEPRECATED,
    "MaintainerDeprecated",
    "maintainer-deprecated",
    "The MAINTAINER instruction is deprecated, use a label instead to define an image author"
);
buildkit_rule!(
    UNDEFINED_ARG_IN_FROM,
    "UndefinedArgInFrom",
    "undefined-arg-in-from",
    "FROM command must use declared ARGs"
);
buildkit_rule!(
    WORKDIR_RELATIVE_PATH,
    "WorkdirRelativePath",
    "workdir-relative-path",
    "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes"
);
buildkit_rule!(
    UNDEFINED_VAR,
    "UndefinedVar",
    "undefined-var",
    "Variables should be defined before their use"
);
buildkit_rule!(
    MULTIPLE_INSTRUCTIONS_DISALLOWED,
    "MultipleInstructionsDisallowed",
    "multiple-instructions-disallowed",
    "Multiple instructions of the same type should not be used in the same stage"
);
buildkit_rule!(
    LEGACY_KEY_VALUE_FORMAT,
    "LegacyKeyValueFormat",
    "legacy-key-value-format",
    "Legacy key/value format with whitespace separator should not be used"
);
buildkit_rule!(
    REDUNDANT_TARGET_PLATFORM,
    "RedundantTargetPlatform",
    "redundant-target-platform",
    "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior"
);
buildkit_rule!(
    SECRETS_USED_IN_ARG_OR_ENV,
    "SecretsUsedInArgOrEnv",
    "secrets-used-in-arg-or-env",
    "Sensitive data should not be used in the ARG or ENV commands"
);
buildkit_rule!(
    INVALID_DEFAULT_ARG_IN_FROM,
    "InvalidDefaultArgInFrom",
    "invalid-default-arg-in-from",
    "Default value for global ARG results in an empty or invalid base image name"
);
buildkit_rule!(
    FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    "FromPlatformFlagConstDisallowed",
    "from-platform-flag-const-disallowed",
    "FROM --platform flag should not use a constant value"
);
buildkit_rule!(
    COPY_IGNORED_FILE,
    "CopyIgnoredFile",
    "copy-ignored-file",
    "Attempting to Copy file that is excluded by .dockerignore"
);
buildkit_rule!(
    INVALID_DEFINITION_DESCRIPTION,
    "InvalidDefinitionDescription",
    "invalid-definition-description",
    "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.",
    true
);
buildkit_rule!(
    EXPOSE_PROTO_CASING,
    "ExposeProtoCasing",
    "expose-proto-casing",
    "Protocol in EXPOSE instruction should be lowercase"
);
buildkit_rule!(
    EXPOSE_INVALID_FORMAT,
    "ExposeInvalidFormat",
    "expose-invalid-format",
    "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release"
);

/// strata's `NonPortableStageName`: a stage name buildah accepts and BuildKit refuses.
pub const NON_PORTABLE_STAGE_NAME: Rule = Rule {
    name: "NonPortableStageName",
    description: "Stage names should be valid for BuildKit too: a lowercase letter, then lowercase letters, digits, '-', '_' or '.'",
    url: None,
    origin: Origin::Strata,
    experimental: false,
};

/// strata's `ChownChmodAfterCopy`: a `RUN chown -R`/`chmod -R` over files an earlier COPY or
/// ADD of the stage added writes them all again into a new layer (dive's "wasted space").
pub const CHOWN_CHMOD_AFTER_COPY: Rule = Rule {
    name: "ChownChmodAfterCopy",
    description: "A RUN chown -R or chmod -R over files an earlier COPY or ADD of the stage added stores them twice; set owner and mode with COPY --chown/--chmod",
    url: None,
    origin: Origin::Strata,
    experimental: false,
};

/// strata's `CopyContextBeforeInstall`: `COPY .` of the whole context before a dependency
/// install makes every change to any file re-run the install.
pub const COPY_CONTEXT_BEFORE_INSTALL: Rule = Rule {
    name: "CopyContextBeforeInstall",
    description: "Copying the whole build context before installing dependencies re-runs the install on every change; copy the dependency manifests first",
    url: None,
    origin: Origin::Strata,
    experimental: false,
};

/// Every rule, BuildKit's first (in the order of its rule set), then strata's.
pub const RULES: &[Rule] = &[
    STAGE_NAME_CASING,
    FROM_AS_CASING,
    NO_EMPTY_CONTINUATION,
    CONSISTENT_INSTRUCTION_CASING,
    DUPLICATE_STAGE_NAME,
    RESERVED_STAGE_NAME,
    JSON_ARGS_RECOMMENDED,
    MAINTAINER_DEPRECATED,
    UNDEFINED_ARG_IN_FROM,
    WORKDIR_RELATIVE_PATH,
    UNDEFINED_VAR,
    MULTIPLE_INSTRUCTIONS_DISALLOWED,
    LEGACY_KEY_VALUE_FORMAT,
    REDUNDANT_TARGET_PLATFORM,
    SECRETS_USED_IN_ARG_OR_ENV,
    INVALID_DEFAULT_ARG_IN_FROM,
    FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    COPY_IGNORED_FILE,
    INVALID_DEFINITION_DESCRIPTION,
    EXPOSE_PROTO_CASING,
    EXPOSE_INVALID_FORMAT,
    NON_PORTABLE_STAGE_NAME,
    CHOWN_CHMOD_AFTER_COPY,
    COPY_CONTEXT_BEFORE_INSTALL,
];

/// The rule named `name`, if there is one.
pub fn rule(name: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.name == name)
}

/// One finding: the rule, the message for this occurrence and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckWarning {
    /// The rule's name.
    pub rule: &'static str,
    /// The rule's description.
    pub description: &'static str,
    /// The rule's documentation URL (`null` for strata's rules).
    pub url: Option<&'static str>,
    /// What is wrong here, in BuildKit's words for its rules.
    pub message: String,
    /// The instruction at fault (line 0: the recipe as a whole).
    #[serde(flatten)]
    pub span: Span,
}

/// Which rules run, and whether warnings fail a build: BuildKit's linter configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    /// `skip=all`: no (non-experimental) rule runs.
    pub skip_all: bool,
    /// `skip=Rule1,Rule2`.
    pub skip: BTreeSet<String>,
    /// `experimental=all`.
    pub experimental_all: bool,
    /// `experimental=Rule1,...`: experimental rules to run.
    pub experimental: BTreeSet<String>,
    /// `error=true`: a build with warnings fails.
    pub error: bool,
}

impl CheckConfig {
    /// Whether `rule` runs under this configuration.
    pub fn enables(&self, rule: &Rule) -> bool {
        if rule.experimental {
            self.experimental_all || self.experimental.contains(rule.name)
        } else {
            !(self.skip_all || self.skip.contains(rule.name))
        }
    }

    /// This configuration with `other`'s settings added (BuildKit's `WithMergedConfig`: a
    /// per-instruction comment can skip or enable more, never less).
    pub fn merged(&self, other: &CheckConfig) -> CheckConfig {
        let mut out = self.clone();
        out.skip_all |= other.skip_all;
        out.skip.extend(other.skip.iter().cloned());
        out.experimental_all |= other.experimental_all;
        out.experimental.extend(other.experimental.iter().cloned());
        out
    }
}

impl FromStr for CheckConfig {
    type Err = ParseErrorKind;

    /// Parses `skip=A,B;error=true;experimental=C` as BuildKit's `ParseLintOptions` does
    /// (at most three `;`-separated options); the error, a
    /// [`ParseErrorKind::InvalidDirective`] for `check`, says which option is bad.
    fn from_str(text: &str) -> Result<CheckConfig, ParseErrorKind> {
        let invalid =
            |reason: String| ParseErrorKind::InvalidDirective { name: "check".into(), reason };
        let mut config = CheckConfig::default();
        let text = text.trim();
        if text.is_empty() {
            return Ok(config);
        }
        let names = |v: &str| -> (bool, BTreeSet<String>) {
            match v.trim() {
                "all" => (true, BTreeSet::new()),
                v => (false, v.split(',').map(|r| r.trim().to_string()).collect()),
            }
        };
        for part in text.splitn(3, ';') {
            let Some((key, value)) = part.split_once('=') else {
                return Err(invalid(format!("invalid check option {part:?}")));
            };
            match key.trim() {
                "skip" => (config.skip_all, config.skip) = names(value),
                "experimental" => (config.experimental_all, config.experimental) = names(value),
                "error" => {
                    config.error = go_parse_bool(value.trim())
                        .ok_or_else(|| invalid(format!("failed to parse check option {part:?}")))?
                }
                other => return Err(invalid(format!("invalid check option {other:?}"))),
            }
        }
        Ok(config)
    }
}

/// Go's `strconv.ParseBool`.
fn go_parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The environment of a base image, by the reference `FROM` names (`None`: unknown).
pub type BaseEnv<'a> = &'a dyn Fn(&str) -> Option<Vec<(String, String)>>;

/// What the caller knows besides the recipe.
#[derive(Default)]
pub struct CheckOptions<'a> {
    /// `--build-arg` values (also the source of `BUILDKIT_DOCKERFILE_CHECK`).
    pub build_args: BuildArgs,
    /// Check only the stages this target (name or index) needs; all stages when `None`, as
    /// `docker build --check` without `--target` does.
    pub target: Option<String>,
    /// The context's `.dockerignore`, for `CopyIgnoredFile`.
    pub ignore: Option<&'a DockerIgnore>,
    /// The environment of an image `FROM` names, when known, for `UndefinedVar`.
    pub base_env: Option<BaseEnv<'a>>,
}

/// The result of [`run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// The findings, by position in the recipe.
    pub warnings: Vec<CheckWarning>,
    /// The configuration in force for the recipe as a whole.
    pub config: CheckConfig,
}

impl CheckReport {
    /// Whether a build must fail: `error=true` and at least one warning (BuildKit's
    /// `lint violation found for rules: ...`).
    pub fn fails_build(&self) -> bool {
        self.config.error && !self.warnings.is_empty()
    }

    /// The names of the rules that found something, each once, in rule order.
    pub fn rules_violated(&self) -> Vec<&'static str> {
        RULES
            .iter()
            .map(|r| r.name)
            .filter(|name| self.warnings.iter().any(|w| w.rule == *name))
            .collect()
    }
}

/// The build argument that replaces the `# check=` directive (BuildKit's).
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// Runs the checks over `recipe`. Fails only where a build would: the stages cannot be formed
/// or expanded, or the check configuration itself is malformed.
pub fn run(recipe: &Recipe, opts: &CheckOptions<'_>) -> Result<CheckReport, ParseError> {
    let config = file_config(recipe, &opts.build_args)?;
    let mut lint = Lint { config: config.clone(), warnings: Vec::new() };
    let nodes = &recipe.ast().nodes;
    let stages = recipe.stages(&opts.build_args)?;
    let reachable: BTreeSet<usize> = match &opts.target {
        None => (0..stages.len()).collect(),
        Some(t) => recipe.plan(&opts.build_args, Some(t))?.order.into_iter().collect(),
    };
    // Node indices: the global ARGs, then each stage's FROM and instructions.
    let mut from_nodes = Vec::new();
    let mut stage_nodes: Vec<Vec<usize>> = Vec::new();
    let mut global_nodes = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        if node.keyword == "from" {
            from_nodes.push(i);
            stage_nodes.push(Vec::new());
        } else if let Some(last) = stage_nodes.last_mut() {
            last.push(i);
        } else {
            global_nodes.push(i);
        }
    }

    for w in &recipe.ast().warnings {
        lint.emit(&NO_EMPTY_CONTINUATION, None, w.span, "Empty continuation line".to_string());
    }
    for &i in &global_nodes {
        definition_description(&mut lint, recipe, i);
    }
    for (s, &i) in from_nodes.iter().enumerate() {
        from_line(&mut lint, &nodes[i]);
        definition_description(&mut lint, recipe, i);
        for &j in &stage_nodes[s] {
            if nodes[j].keyword == "maintainer" {
                let msg = "Maintainer instruction is deprecated in favor of using label";
                lint.emit(&MAINTAINER_DEPRECATED, Some(&nodes[j]), nodes[j].span, msg.into());
            }
            if nodes[j].keyword == "arg" {
                definition_description(&mut lint, recipe, j);
            }
        }
    }
    stage_names(&mut lint, &stages, nodes, &from_nodes);
    command_casing(&mut lint, nodes, &from_nodes, &stage_nodes);
    base_names_with_defaults(&mut lint, recipe, &stages, nodes, &from_nodes);
    from_args(&mut lint, recipe, opts, &stages, nodes, &from_nodes)?;

    // Flags mark the warnings of the stage being walked, dropped when the target does not need
    // it (it is still walked: stages built on it inherit its state).
    lint.warnings.iter_mut().for_each(|w| w.1 = false);
    let mut walked: Vec<Walked> = Vec::with_capacity(stages.len());
    for stage in &stages {
        let needed = reachable.contains(&stage.index);
        let w = match walk_stage(&mut lint, recipe, opts, stage, &walked, &stage_nodes[stage.index])
        {
            Ok(w) => w,
            // A build would not expand a stage it does not need, so neither does it fail.
            Err(_) if !needed => Walked::default(),
            Err(e) => return Err(e),
        };
        if !needed {
            lint.warnings.retain(|w| !w.1);
        }
        lint.warnings.iter_mut().for_each(|w| w.1 = false);
        walked.push(w);
    }

    let mut warnings: Vec<CheckWarning> = lint.warnings.into_iter().map(|w| w.0).collect();
    let order = |name: &str| RULES.iter().position(|r| r.name == name).unwrap_or(usize::MAX);
    warnings.sort_by(|a, b| {
        (a.span.line, a.span.column, order(a.rule)).cmp(&(
            b.span.line,
            b.span.column,
            order(b.rule),
        ))
    });
    Ok(CheckReport { warnings, config })
}

/// The configuration of the recipe: `BUILDKIT_DOCKERFILE_CHECK` if given, else the `check`
/// directive.
fn file_config(recipe: &Recipe, args: &BuildArgs) -> Result<CheckConfig, ParseError> {
    if let Some(v) = args.get(CHECK_BUILD_ARG) {
        return v.parse().map_err(|kind| {
            let kind = match kind {
                ParseErrorKind::InvalidDirective { reason, .. } => {
                    ParseErrorKind::InvalidDirective { name: CHECK_BUILD_ARG.to_string(), reason }
                }
                other => other,
            };
            ParseError::new(kind, Span::default())
        });
    }
    match recipe.directives().iter().find(|d| d.name == "check") {
        None => Ok(CheckConfig::default()),
        Some(d) => d.value.parse().map_err(|kind| ParseError::new(kind, d.span)),
    }
}

/// The `# check=...` comment directly above `node`, if any (BuildKit reads the first comment
/// that is a `check` directive, its value up to the first space; a malformed one is ignored).
fn comment_config(node: &Node) -> Option<CheckConfig> {
    for comment in &node.comments {
        let name_len = comment
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
            .map_or(comment.len(), |(i, _)| i);
        if name_len == 0 || !comment[..name_len].eq_ignore_ascii_case("check") {
            continue;
        }
        let Some(value) = comment[name_len..].trim_start().strip_prefix('=') else { continue };
        let value = value.trim();
        let value = value.split(' ').next().unwrap_or("");
        return value.parse().ok();
    }
    None
}

/// Warnings found so far; the flag marks those of the stage being walked.
struct Lint {
    config: CheckConfig,
    warnings: Vec<(CheckWarning, bool)>,
}

impl Lint {
    /// Records a warning of `rule` at `span` if the configuration in force at `node` (the
    /// file's, refined by the node's `# check=` comment) enables it.
    fn emit(&mut self, rule: &Rule, node: Option<&Node>, span: Span, message: String) {
        let enabled = match node.and_then(comment_config) {
            Some(c) => self.config.merged(&c).enables(rule),
            None => self.config.enables(rule),
        };
        if enabled {
            let w = CheckWarning {
                rule: rule.name,
                description: rule.description,
                url: rule.url,
                message,
                span,
            };
            self.warnings.push((w, true));
        }
    }
}

/// The instruction keyword as written (`from`, `Run`...): BuildKit's messages use it.
fn keyword_as_written(node: &Node) -> &str {
    let text = node.original.trim_start();
    text.split(|c: char| c.is_whitespace()).next().unwrap_or(text)
}

/// Go's `%q` for the simple strings these messages quote.
fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn is_self_consistent(s: &str) -> bool {
    s == s.to_lowercase() || s == s.to_uppercase()
}

/// `StageNameCasing`, `FromAsCasing`, `NonPortableStageName` on one `FROM` line.
fn from_line(lint: &mut Lint, node: &Node) {
    let [_, as_kw, name] = node.args.as_slice() else { return };
    if !as_kw.eq_ignore_ascii_case("as") {
        return;
    }
    if *name != name.to_lowercase() {
        let msg = format!("Stage name '{name}' should be lowercase");
        lint.emit(&STAGE_NAME_CASING, Some(node), node.span, msg);
    }
    let from = keyword_as_written(node);
    let from_lower = from == from.to_lowercase();
    let matches = if from_lower {
        *as_kw == as_kw.to_lowercase()
    } else if from == from.to_uppercase() {
        *as_kw == as_kw.to_uppercase()
    } else {
        true
    };
    if !matches {
        let msg = format!("'{as_kw}' and '{from}' keywords' casing do not match");
        lint.emit(&FROM_AS_CASING, Some(node), node.span, msg);
    }
    let lower = name.to_ascii_lowercase();
    if !valid_stage_name(&lower) {
        let msg = format!(
            "Stage name '{lower}' is accepted by buildah but refused by BuildKit, which allows only [a-z][a-z0-9-_.]*"
        );
        lint.emit(&NON_PORTABLE_STAGE_NAME, Some(node), node.span, msg);
    }
}

/// `InvalidDefinitionDescription` (experimental) for a `FROM ... AS name` or `ARG` node.
fn definition_description(lint: &mut Lint, recipe: &Recipe, index: usize) {
    let node = &recipe.ast().nodes[index];
    let Some(last) = node.comments.last() else { return };
    let (instruction, keys): (&str, Vec<String>) = match &recipe.steps()[index].instruction {
        Instruction::From { name: Some(name), .. } => ("FROM", vec![name.clone()]),
        Instruction::Arg(decls) => ("ARG", decls.iter().map(|d| d.name.clone()).collect()),
        _ => return,
    };
    let first = last.split(' ').next().unwrap_or("");
    if keys.iter().any(|k| k == first) {
        return;
    }
    let example = if keys.len() > 1 { "<arg_key>" } else { keys[0].as_str() };
    let msg =
        format!("Comment for {instruction} should follow the format: `# {example} <description>`");
    lint.emit(&INVALID_DEFINITION_DESCRIPTION, Some(node), node.span, msg);
}

/// `ReservedStageName` and `DuplicateStageName`, over every stage.
fn stage_names(lint: &mut Lint, stages: &[Stage], nodes: &[Node], from_nodes: &[usize]) {
    let mut seen = HashSet::new();
    for stage in stages {
        let Some(name) = &stage.name else { continue };
        let span = nodes[from_nodes[stage.index]].span;
        if name == "context" || name == "scratch" {
            let msg = format!(
                "Stage name should not use the same name as reserved stage {}",
                go_quote(name)
            );
            lint.emit(&RESERVED_STAGE_NAME, None, span, msg);
        }
        if !seen.insert(name.clone()) {
            let msg =
                format!("Duplicate stage name {}, stage names should be unique", go_quote(name));
            lint.emit(&DUPLICATE_STAGE_NAME, None, span, msg);
        }
    }
}

/// `ConsistentInstructionCasing`: the casing of the majority of the stages' instructions
/// (global `ARG`s do not count) is the one every instruction should have.
fn command_casing(
    lint: &mut Lint,
    nodes: &[Node],
    from_nodes: &[usize],
    stage_nodes: &[Vec<usize>],
) {
    let all: Vec<usize> = from_nodes
        .iter()
        .zip(stage_nodes)
        .flat_map(|(f, rest)| std::iter::once(*f).chain(rest.iter().copied()))
        .collect();
    let (mut lower, mut upper) = (0, 0);
    for &i in &all {
        let kw = keyword_as_written(&nodes[i]);
        if is_self_consistent(kw) {
            if kw == kw.to_lowercase() {
                lower += 1;
            } else {
                upper += 1;
            }
        }
    }
    let majority_lower = lower > upper;
    for &i in &all {
        let kw = keyword_as_written(&nodes[i]);
        let casing = if majority_lower && kw.to_lowercase() != kw {
            "lowercase"
        } else if !majority_lower && kw.to_uppercase() != kw {
            "uppercase"
        } else {
            continue;
        };
        let msg =
            format!("Command '{kw}' should match the case of the command majority ({casing})");
        lint.emit(&CONSISTENT_INSTRUCTION_CASING, None, nodes[i].span, msg);
    }
}

/// The values `FROM` lines see: the builtin platform args, then the global ARGs (in order,
/// with `args` overriding defaults when given).
fn from_scope(
    recipe: &Recipe,
    args: Option<&BuildArgs>,
) -> Result<Vec<(String, String)>, ParseError> {
    let mut scope: Vec<(String, String)> = builtin_args(args.unwrap_or(&BuildArgs::default()));
    let lexer = ShellLexer::new(recipe.escape());
    for step in recipe.steps() {
        match &step.instruction {
            Instruction::From { .. } => break,
            Instruction::Arg(decls) => {
                for d in decls {
                    let given = args.and_then(|a| a.get(&d.name)).map(str::to_string);
                    let value = match (given, &d.default) {
                        (Some(v), _) => Some(v),
                        (None, Some(default)) => Some(
                            lexer
                                .expand_word(default, &scope)
                                .map_err(|k| ParseError::new(k, step.span))?
                                .value,
                        ),
                        (None, None) => None,
                    };
                    scope.retain(|(k, _)| *k != d.name);
                    if let Some(v) = value {
                        scope.push((d.name.clone(), v));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(scope)
}

/// `InvalidDefaultArgInFrom`: with only the global ARGs' defaults (no `--build-arg`), every
/// base name must still be a valid image reference.
fn base_names_with_defaults(
    lint: &mut Lint,
    recipe: &Recipe,
    stages: &[Stage],
    nodes: &[Node],
    from_nodes: &[usize],
) {
    let Ok(scope) = from_scope(recipe, None) else { return };
    let lexer = ShellLexer::new(recipe.escape());
    for stage in stages {
        let node = &nodes[from_nodes[stage.index]];
        let Some(word) = node.args.first() else { continue };
        let Ok(expanded) = lexer.expand_word(word, &scope) else { return };
        if !valid_base_name(&expanded.value) {
            let msg =
                format!("Default value for ARG {word} results in empty or invalid base image name");
            lint.emit(&INVALID_DEFAULT_ARG_IN_FROM, None, stage.span, msg);
        }
    }
}

/// A base `FROM` may name: an image reference (Docker's grammar, as BuildKit requires) or one
/// of strata's transports.
fn valid_base_name(name: &str) -> bool {
    let transport = ["oci:", "docker-archive:", "docker://", "strata:"];
    if transport.iter().any(|t| name.starts_with(t)) {
        return name.parse::<ImageLocation>().is_ok();
    }
    name.parse::<Reference>().is_ok()
}

/// `UndefinedArgInFrom`, `RedundantTargetPlatform` and `FromPlatformFlagConstDisallowed`.
fn from_args(
    lint: &mut Lint,
    recipe: &Recipe,
    opts: &CheckOptions<'_>,
    stages: &[Stage],
    nodes: &[Node],
    from_nodes: &[usize],
) -> Result<(), ParseError> {
    let scope = from_scope(recipe, Some(&opts.build_args))?;
    let lexer = ShellLexer::new(recipe.escape());
    let mut declared: BTreeSet<String> = scope.iter().map(|(k, _)| k.clone()).collect();
    for step in recipe.steps() {
        match &step.instruction {
            Instruction::From { .. } => break,
            Instruction::Arg(decls) => declared.extend(decls.iter().map(|d| d.name.clone())),
            _ => {}
        }
    }
    let candidates: Vec<String> = declared.iter().cloned().collect();
    for stage in stages {
        let node = &nodes[from_nodes[stage.index]];
        let Instruction::From { image, platform, name } =
            &recipe.steps()[from_nodes[stage.index]].instruction
        else {
            continue;
        };
        let undeclared = |lint: &mut Lint, unset: &BTreeSet<String>| {
            for arg in unset.iter().filter(|a| !declared.contains(*a)) {
                let mut msg = format!("FROM argument '{arg}' is not declared");
                if let Some(s) = suggest(arg, &candidates) {
                    msg.push_str(&format!(" (did you mean {s}?)"));
                }
                lint.emit(&UNDEFINED_ARG_IN_FROM, Some(node), node.span, msg);
            }
        };
        if let Ok(e) = lexer.expand_word(image, &scope) {
            undeclared(lint, &e.unset);
        }
        let Some(platform) = platform else { continue };
        let Ok(e) = lexer.expand_word(platform, &scope) else { continue };
        undeclared(lint, &e.unset);
        let target = scope.lookup("TARGETPLATFORM");
        if e.used.len() == 1
            && e.used.contains("TARGETPLATFORM")
            && e.unset.is_empty()
            && target == Some(e.value.as_str())
        {
            let msg = format!(
                "Setting platform to predefined {platform} in FROM is redundant as this is the default behavior"
            );
            lint.emit(&REDUNDANT_TARGET_PLATFORM, Some(node), node.span, msg);
        }
        if e.used.is_empty() && e.unset.is_empty() {
            if let Ok(p) = e.value.parse::<Platform>() {
                let stage_name = name.as_deref().unwrap_or("");
                if !stage_name.contains(&p.os) && !stage_name.contains(&p.architecture) {
                    let msg = format!(
                        "FROM --platform flag should not use constant value {}",
                        go_quote(&e.value)
                    );
                    lint.emit(&FROM_PLATFORM_FLAG_CONST_DISALLOWED, Some(node), node.span, msg);
                }
            }
        }
    }
    Ok(())
}

/// The closest of `options` to `word` within an edit distance of 2 (BuildKit's
/// `suggest.Search`, case-sensitive); `None` when `word` is one of them or none is close.
fn suggest(word: &str, options: &[String]) -> Option<String> {
    let mut best: Option<&String> = None;
    let mut min = 3;
    for opt in options {
        if opt == word {
            return None;
        }
        let d = levenshtein(word, opt);
        if d < min {
            min = d;
            best = Some(opt);
        }
    }
    best.cloned()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// What a stage leaves to the stages built `FROM` it.
#[derive(Debug, Clone, Default)]
struct Walked {
    /// ENV keys and ARG names known at its end; `None` when its base image's env is unknown.
    known: Option<Vec<String>>,
    /// Its environment at its end (for expanding the next stage's words).
    env: Vec<(String, String)>,
    /// A `WORKDIR` was set somewhere in its chain.
    workdir_set: bool,
    /// Its working directory at its end (`/` for an image base: unknown, assumed).
    workdir: String,
    /// A `SHELL` was set somewhere in its chain.
    shell_set: bool,
}

/// The default `PATH` BuildKit gives a scratch stage.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A [`Lookup`] that remembers every name it could not find.
struct Recording<'a> {
    inner: &'a Scope,
    misses: RefCell<BTreeSet<String>>,
}

impl Lookup for Recording<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        let found = self.inner.lookup(name);
        if found.is_none() {
            self.misses.borrow_mut().insert(name.to_string());
        }
        found
    }
}

/// Names BuildKit never reports as undefined (its `nonEnvArgs`).
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// A COPY or ADD seen earlier in the stage, for strata's rules.
struct Copied {
    line: usize,
    keyword: &'static str,
    dest: String,
    whole_context: bool,
}

/// Walks one stage in order: the rules BuildKit runs while dispatching instructions, and
/// strata's own.
fn walk_stage(
    lint: &mut Lint,
    recipe: &Recipe,
    opts: &CheckOptions<'_>,
    stage: &Stage,
    walked: &[Walked],
    node_ids: &[usize],
) -> Result<Walked, ParseError> {
    let nodes = &recipe.ast().nodes;
    let lexer = ShellLexer::new(recipe.escape());
    let mut state = match &stage.base {
        Base::Scratch => Walked {
            known: Some(vec!["PATH".to_string()]),
            env: vec![("PATH".to_string(), DEFAULT_PATH.to_string())],
            workdir: "/".into(),
            ..Walked::default()
        },
        Base::Image(r) => {
            let env = opts.base_env.and_then(|f| f(r));
            Walked {
                known: env.as_ref().map(|e| e.iter().map(|(k, _)| k.clone()).collect()),
                env: env.unwrap_or_default(),
                workdir: "/".into(),
                ..Walked::default()
            }
        }
        Base::Stage(j) => walked.get(*j).cloned().unwrap_or_default(),
    };
    let mut declared: BTreeSet<String> = BTreeSet::new();
    let (mut cmd, mut entrypoint, mut healthcheck) = (None::<Span>, None::<Span>, None::<Span>);
    let mut copies: Vec<Copied> = Vec::new();
    let mut install_reported: BTreeSet<usize> = BTreeSet::new();
    let mut k = 0;
    let base_env = state.env.clone();
    let expanded = stage.expand_with(&base_env, &opts.build_args, recipe.escape(), &mut |step, scope| {
        let Some(&node_id) = node_ids.get(k) else { return };
        k += 1;
        let node = &nodes[node_id];
        let original = &stage.steps[k - 1];
        let kw = keyword_as_written(node);

        // UndefinedVar: the words this instruction expands, as BuildKit's dispatcher does.
        if let Some(known) = &state.known {
            let rec = Recording { inner: scope, misses: RefCell::new(BTreeSet::new()) };
            match &original.instruction {
                Instruction::Arg(decls) => {
                    for d in decls {
                        if opts.build_args.get(&d.name).is_some() {
                            continue;
                        }
                        if let Some(default) = &d.default {
                            let _ = lexer.expand_word(default, &rec);
                        }
                    }
                }
                Instruction::Onbuild { .. } => {}
                other => {
                    let _ = other.expand(&lexer, &rec, step.span);
                }
            }
            let mut options: Vec<String> = known.clone();
            options.extend(scope.env().iter().map(|(k, _)| k.clone()));
            options.extend(scope.args().iter().map(|(k, _)| k.clone()));
            for name in rec.misses.into_inner() {
                if declared.contains(&name)
                    || known.contains(&name)
                    || NON_ENV_ARGS.contains(&name.as_str())
                {
                    continue;
                }
                let mut msg = format!("Usage of undefined variable '${name}'");
                if let Some(s) = suggest(&name, &options) {
                    msg.push_str(&format!(" (did you mean ${s}?)"));
                }
                lint.emit(&UNDEFINED_VAR, Some(node), node.span, msg);
            }
        }

        match &step.instruction {
            Instruction::Cmd(c) | Instruction::Entrypoint(c) => {
                let slot = if matches!(step.instruction, Instruction::Cmd(_)) {
                    &mut cmd
                } else {
                    &mut entrypoint
                };
                if let Some(previous) = slot.replace(node.span) {
                    let msg = format!("Multiple {kw} instructions should not be used in the same stage because only the last one will be used");
                    lint.emit(&MULTIPLE_INSTRUCTIONS_DISALLOWED, Some(node), previous, msg);
                }
                if matches!(c, Command::Shell(_)) && !state.shell_set {
                    let msg = format!("JSON arguments recommended for {kw} to prevent unintended behavior related to OS signals");
                    lint.emit(&JSON_ARGS_RECOMMENDED, Some(node), node.span, msg);
                }
            }
            Instruction::Healthcheck(_) => {
                if let Some(previous) = healthcheck.replace(node.span) {
                    let msg = format!("Multiple {kw} instructions should not be used in the same stage because only the last one will be used");
                    lint.emit(&MULTIPLE_INSTRUCTIONS_DISALLOWED, Some(node), previous, msg);
                }
            }
            Instruction::Shell(_) => state.shell_set = true,
            Instruction::Env(kvs) | Instruction::Label(kvs) => {
                if node.args.chunks(3).any(|t| t.get(2).is_some_and(String::is_empty)) {
                    let msg = format!("\"{kw} key=value\" should be used instead of legacy \"{kw} key value\" format");
                    lint.emit(&LEGACY_KEY_VALUE_FORMAT, Some(node), node.span, msg);
                }
                if matches!(step.instruction, Instruction::Env(_)) {
                    for kv in kvs {
                        secret_key(lint, node, "ENV", &kv.key);
                    }
                }
            }
            Instruction::Arg(decls) => {
                for d in decls {
                    secret_key(lint, node, "ARG", &d.name);
                }
            }
            Instruction::Workdir(path) => {
                if !state.workdir_set && !path.starts_with('/') {
                    let msg = format!(
                        "Relative workdir {} can have unexpected results if the base image changes",
                        go_quote(path)
                    );
                    lint.emit(&WORKDIR_RELATIVE_PATH, Some(node), node.span, msg);
                }
                state.workdir_set = true;
                state.workdir = join_path(&state.workdir, path);
            }
            Instruction::Expose(ports) => {
                for port in ports {
                    expose(lint, node, port);
                }
            }
            Instruction::Copy(spec) | Instruction::Add(spec) => {
                let is_add = matches!(step.instruction, Instruction::Add(_));
                if spec.from.is_none() {
                    if let Some(ignore) = opts.ignore {
                        ignored_sources(lint, node, ignore, spec.sources.as_slice(), is_add);
                    }
                }
                let whole_context = spec.from.is_none()
                    && spec.sources.iter().any(|s| {
                        matches!(s, Source::Path { path } if matches!(clean_path(path).as_str(), "." | "/"))
                    });
                copies.push(Copied {
                    line: node.span.line,
                    keyword: if is_add { "ADD" } else { "COPY" },
                    dest: join_path(&state.workdir, &spec.dest),
                    whole_context,
                });
            }
            Instruction::Run(run) => {
                let commands = simple_commands(&run_script(run), &lexer, scope);
                after_copy(lint, node, &commands, &copies, &state.workdir);
                for copy in copies.iter().filter(|c| c.whole_context) {
                    if install_reported.contains(&copy.line) {
                        continue;
                    }
                    if let Some((tool, hint)) = commands.iter().find_map(|c| install_command(c)) {
                        install_reported.insert(copy.line);
                        let msg = format!(
                            "{} at line {} copies the whole context before `{tool}` at line {} installs dependencies: any change to any file re-runs the install; {hint}",
                            copy.keyword, copy.line, node.span.line
                        );
                        let copy_node = nodes.iter().find(|n| n.span.line == copy.line);
                        let span = copy_node.map_or(node.span, |n| n.span);
                        lint.emit(&COPY_CONTEXT_BEFORE_INSTALL, copy_node, span, msg);
                    }
                }
            }
            _ => {}
        }
        if let Instruction::Arg(decls) = &step.instruction {
            declared.extend(decls.iter().map(|d| d.name.clone()));
        }
    });
    let expanded = expanded?;
    state.env = expanded.scope.env().to_vec();
    state.env.extend(expanded.scope.args().iter().cloned());
    if let Some(known) = &mut state.known {
        known.extend(state.env.iter().map(|(k, _)| k.clone()));
        known.extend(declared);
    }
    Ok(state)
}

/// `SecretsUsedInArgOrEnv`: a key one of whose `_`-separated words names a secret (and none
/// says it is public, a file or a version).
fn secret_key(lint: &mut Lint, node: &Node, instruction: &str, key: &str) {
    const DENY: [&str; 10] = [
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    const ALLOW: [&str; 3] = ["public", "file", "version"];
    let words: Vec<String> = key.split('_').map(str::to_lowercase).collect();
    let has = |list: &[&str]| words.iter().any(|w| list.contains(&w.as_str()));
    if has(&DENY) && !has(&ALLOW) {
        let msg = format!(
            "Do not use ARG or ENV instructions for sensitive data ({instruction} {})",
            go_quote(key)
        );
        lint.emit(&SECRETS_USED_IN_ARG_OR_ENV, Some(node), node.span, msg);
    }
}

/// `ExposeProtoCasing` and `ExposeInvalidFormat` for one (expanded) port spec.
fn expose(lint: &mut Lint, node: &Node, raw: &str) {
    let parts: Vec<&str> = raw.split(':').collect();
    let n = parts.len();
    let (ip, host, container) = match n {
        1 => (String::new(), "", parts[0]),
        2 => (String::new(), parts[0], parts[1]),
        _ => (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1]),
    };
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    if port.is_empty() || !matches!(proto.to_lowercase().as_str(), "" | "tcp" | "udp" | "sctp") {
        return;
    }
    if proto != proto.to_lowercase() {
        let msg = format!("Defined protocol '{raw}' in EXPOSE instruction should be lowercase");
        lint.emit(&EXPOSE_PROTO_CASING, Some(node), node.span, msg);
    }
    if !ip.is_empty() || !host.is_empty() {
        let msg = format!(
            "EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"
        );
        lint.emit(&EXPOSE_INVALID_FORMAT, Some(node), node.span, msg);
    }
}

/// `CopyIgnoredFile`: context sources the `.dockerignore` excludes. As in BuildKit, not
/// checked when the file has exceptions (`!pattern`), which make exclusion a matter of what
/// is below a directory; the context root counts only when `*`, `**` or `**/*` excludes all.
fn ignored_sources(
    lint: &mut Lint,
    node: &Node,
    ignore: &DockerIgnore,
    sources: &[Source],
    is_add: bool,
) {
    if ignore.is_empty() || ignore.has_exceptions() {
        return;
    }
    let cmd = if is_add { "Add" } else { "Copy" };
    for source in sources {
        let Source::Path { path } = source else { continue };
        let src = clean_path(path);
        let excluded = if src == "." || src == "/" {
            ignore.patterns().any(|p| !p.is_exclusion() && matches!(p.text(), "*" | "**" | "**/*"))
        } else {
            // BuildKit matches the cleaned source as written: one with a leading `/` never
            // matches a pattern, which are all relative.
            !src.starts_with('/') && ignore.is_excluded(&src)
        };
        if excluded {
            let msg = format!(
                "Attempting to {cmd} file {} that is excluded by .dockerignore",
                go_quote(&src)
            );
            lint.emit(&COPY_IGNORED_FILE, Some(node), node.span, msg);
        }
    }
}

/// Go's `path.Clean` for `/`-separated paths.
fn clean_path(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// `path` resolved against the working directory `wd`, cleaned (absolute).
fn join_path(wd: &str, path: &str) -> String {
    if path.starts_with('/') {
        clean_path(path)
    } else {
        clean_path(&format!("{}/{path}", if wd.is_empty() { "/" } else { wd }))
    }
}

/// The shell text a RUN executes: its command and heredoc bodies; for the exec form, the
/// script of `sh -c SCRIPT`, else the words.
fn run_script(run: &crate::instruction::RunSpec) -> String {
    let mut text = match &run.command {
        Command::Shell(s) => s.clone(),
        Command::Exec(argv) => match argv.as_slice() {
            [sh, c, script, ..] if sh.ends_with("sh") && c == "-c" => script.clone(),
            _ => argv.join(" "),
        },
    };
    for h in &run.heredocs {
        text.push('\n');
        text.push_str(&h.content);
    }
    text
}

/// A shell script cut into simple commands (at `;`, `&&`, `||`, `|`, `&`, newlines and
/// parentheses, outside quotes), each a list of words with quotes removed and variables
/// expanded with `scope`. A heuristic reading for the checks, not a shell.
fn simple_commands(script: &str, lexer: &ShellLexer, scope: &Scope) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = script.chars().peekable();
    let flush_word = |word: &mut String, words: &mut Vec<String>| {
        if !word.is_empty() {
            let w =
                lexer.expand_word(word, scope).map(|e| e.value).unwrap_or_else(|_| word.clone());
            words.push(w);
            word.clear();
        }
    };
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            word.push(c);
            if c == q {
                quote = None;
            } else if c == '\\' && q == '"' {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                word.push(c);
            }
            '\\' => match chars.next() {
                Some('\n') | None => {}
                Some(n) => {
                    word.push('\\');
                    word.push(n);
                }
            },
            ';' | '&' | '|' | '\n' | '(' | ')' => {
                flush_word(&mut word, &mut words);
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            c if c.is_whitespace() => flush_word(&mut word, &mut words),
            c => word.push(c),
        }
    }
    flush_word(&mut word, &mut words);
    if !words.is_empty() {
        commands.push(words);
    }
    // Drop what only prefixes the real command.
    for cmd in &mut commands {
        while let Some(first) = cmd.first() {
            let is_assignment = first.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            if is_assignment
                || matches!(first.as_str(), "sudo" | "exec" | "command" | "env" | "time")
            {
                cmd.remove(0);
            } else {
                break;
            }
        }
    }
    commands.retain(|c| !c.is_empty());
    commands
}

fn program(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// `ChownChmodAfterCopy` for one RUN.
fn after_copy(
    lint: &mut Lint,
    node: &Node,
    commands: &[Vec<String>],
    copies: &[Copied],
    workdir: &str,
) {
    for cmd in commands {
        let tool = program(&cmd[0]);
        if tool != "chown" && tool != "chmod" {
            continue;
        }
        let mut recursive = false;
        let mut operands = Vec::new();
        for w in &cmd[1..] {
            if w == "--recursive" {
                recursive = true;
            } else if let Some(flags) = w.strip_prefix('-').filter(|f| !f.starts_with('-')) {
                // `chmod -x file` is a mode, not a flag; a cluster with R is recursive.
                if flags.contains('R') {
                    recursive = true;
                } else if tool == "chmod" && flags.chars().all(|c| "rwxXst".contains(c)) {
                    operands.push(w.as_str());
                }
            } else if !w.starts_with("--") {
                operands.push(w.as_str());
            }
        }
        if !recursive || operands.len() < 2 {
            continue;
        }
        for path in &operands[1..] {
            let target = join_path(workdir, path);
            let hit = copies.iter().rev().find(|c| overlaps(&target, &c.dest));
            if let Some(c) = hit {
                let flag = if tool == "chown" { "--chown" } else { "--chmod" };
                let msg = format!(
                    "RUN {tool} -R on {target} rewrites the files {} at line {} added, storing them again in a new layer; use {} {flag} at line {} instead",
                    c.keyword, c.line, c.keyword, c.line
                );
                lint.emit(&CHOWN_CHMOD_AFTER_COPY, Some(node), node.span, msg);
                return;
            }
        }
    }
}

/// Whether a recursive change of `target` touches what was copied to `dest`.
fn overlaps(target: &str, dest: &str) -> bool {
    let within = |a: &str, b: &str| a == b || b == "/" || a.starts_with(&format!("{b}/"));
    within(dest, target) || within(target, dest)
}

/// The dependency install a simple command runs, if any: the tool as it reads in a message
/// and what to do instead.
fn install_command(cmd: &[String]) -> Option<(String, &'static str)> {
    let tool = program(&cmd[0]);
    let args: Vec<&str> =
        cmd[1..].iter().map(String::as_str).filter(|a| !a.starts_with('-')).collect();
    let first = args.first().copied().unwrap_or("");
    let second = args.get(1).copied().unwrap_or("");
    let system = "install system packages before the COPY";
    let hint: &'static str = match (tool, first) {
        ("apt-get" | "apt" | "aptitude", "install")
        | ("yum" | "dnf" | "microdnf" | "tdnf", "install")
        | ("zypper", "install" | "in")
        | ("apk", "add") => system,
        ("pip" | "pip3" | "pip2", "install") => {
            "copy requirements.txt (or pyproject.toml) first and install from it"
        }
        ("pipenv", "install" | "sync") => "copy Pipfile and Pipfile.lock first",
        ("poetry", "install") => "copy pyproject.toml and poetry.lock first",
        ("uv", "sync") => "copy pyproject.toml and uv.lock first",
        ("uv", "pip") if second == "install" => "copy requirements.txt (or pyproject.toml) first",
        ("npm", "install" | "i" | "ci") => "copy package.json and package-lock.json first",
        ("yarn", "" | "install") => "copy package.json and yarn.lock first",
        ("pnpm", "install" | "i") => "copy package.json and pnpm-lock.yaml first",
        ("bun", "install" | "i") => "copy package.json and bun.lockb first",
        ("go", "mod") if second == "download" => "copy go.mod and go.sum first",
        ("cargo", "fetch" | "install") => "copy Cargo.toml and Cargo.lock first",
        ("composer", "install" | "update") => "copy composer.json and composer.lock first",
        ("bundle", "" | "install") => "copy Gemfile and Gemfile.lock first",
        ("gem", "install") => "copy the Gemfile (or gemspec) first",
        ("dotnet", "restore") => "copy the project files (*.csproj) first",
        ("mix", "deps.get") => "copy mix.exs and mix.lock first",
        ("mvn" | "mvnw" | "gradle" | "gradlew", _)
            if args.iter().any(|a| a.starts_with("dependency:") || *a == "dependencies") =>
        {
            "copy the build files (pom.xml, build.gradle) first"
        }
        _ => {
            // `python -m pip install`.
            let pip = matches!(tool, "python" | "python3")
                && cmd.windows(3).any(|w| w[0] == "-m" && w[1] == "pip" && w[2] == "install");
            if !pip {
                return None;
            }
            "copy requirements.txt (or pyproject.toml) first and install from it"
        }
    };
    let shown = match first {
        "" => tool.to_string(),
        f => format!("{tool} {f}"),
    };
    Some((shown, hint))
}
