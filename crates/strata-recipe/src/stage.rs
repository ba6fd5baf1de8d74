//! Stages: a recipe as a set of builds, each from a base, with arguments in scope.
//!
//! A [`Recipe`] is the typed form of the whole file. [`Recipe::stages`] forms the build stages
//! the way BuildKit does: `ARG`s before the first `FROM` are *global* (meta) arguments, usable
//! only in `FROM` lines unless a stage re-declares them with a bare `ARG name`; `--build-arg`
//! overrides any declared default; a `FROM` naming an earlier stage builds on that stage.
//! [`Stage::expand`] then walks one stage in order and expands every instruction with the
//! values it can see at that point: the base image's environment, the stage's `ENV`s and the
//! `ARG`s declared so far, where an `ENV` wins over an `ARG` of the same name.
//! [`Recipe::plan`] picks the stages a `--target` needs, in an order that builds dependencies
//! first.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use strata_types::Platform;

use crate::ast::{Ast, Directive};
use crate::error::{ParseError, ParseErrorKind, Span};
use crate::instruction::{ArgDecl, Instruction};
use crate::shell::{Lookup, ShellLexer};

/// Build arguments given on the command line (`--build-arg K=V`), and the platforms the
/// builtin `BUILD*` and `TARGET*` args describe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildArgs {
    values: BTreeMap<String, String>,
    /// The platform the build runs on (`BUILDPLATFORM`); the host's when `None`.
    build_platform: Option<Platform>,
    /// The platform the build is for (`TARGETPLATFORM`); the host's when `None`.
    target_platform: Option<Platform>,
}

impl BuildArgs {
    /// No build arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.values.insert(name.into(), value.into());
        self
    }

    /// The value given for `name`, if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// All values, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The same values for a build that runs on `build` and targets `target`: the builtin
    /// `BUILDPLATFORM`, `BUILDOS`, ... and `TARGETPLATFORM`, `TARGETARCH`, ... describe them
    /// (a `--build-arg` of the same name still wins, as in BuildKit).
    pub fn for_platforms(&self, build: Platform, target: Platform) -> BuildArgs {
        BuildArgs {
            values: self.values.clone(),
            build_platform: Some(build),
            target_platform: Some(target),
        }
    }

    /// The platform the build runs on (the host's unless set by [`BuildArgs::for_platforms`]).
    pub fn build_platform(&self) -> Platform {
        self.build_platform.clone().unwrap_or_else(Platform::host)
    }

    /// The platform the build is for (the host's unless set by [`BuildArgs::for_platforms`]).
    pub fn target_platform(&self) -> Platform {
        self.target_platform.clone().unwrap_or_else(Platform::host)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for BuildArgs {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut args = BuildArgs::new();
        for (k, v) in iter {
            args.set(k, v);
        }
        args
    }
}

/// The builtin args BuildKit defines (`TARGETPLATFORM`, `BUILDARCH`, ...) for the platforms
/// of `args` (the host's unless a multi-platform build set them).
pub(crate) fn builtin_args(args: &BuildArgs) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (prefix, platform) in [("TARGET", args.target_platform()), ("BUILD", args.build_platform())]
    {
        out.push((format!("{prefix}PLATFORM"), platform.to_string()));
        out.push((format!("{prefix}OS"), platform.os.clone()));
        out.push((format!("{prefix}ARCH"), platform.architecture.clone()));
        out.push((format!("{prefix}VARIANT"), platform.variant_or_empty().to_string()));
    }
    out
}

/// One instruction of the recipe with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// First line (1-based) and column of the instruction.
    pub span: Span,
    /// Last line of the instruction (continuations and heredocs included).
    pub end_line: usize,
    /// The instruction text as written (continuations joined).
    pub original: String,
    /// What it means.
    pub instruction: Instruction,
}

/// A parsed recipe: the syntax tree and its typed instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    ast: Ast,
    steps: Vec<Step>,
}

/// Parses recipe text into a typed [`Recipe`]: every instruction is checked (flags, argument
/// counts, ONBUILD triggers). Stages are formed later by [`Recipe::stages`], which needs the
/// build arguments.
pub fn parse(src: &str) -> Result<Recipe, ParseError> {
    let ast = crate::parser::parse(src)?;
    let steps = ast
        .nodes
        .iter()
        .map(|node| {
            Ok(Step {
                span: node.span,
                end_line: node.end_line,
                original: node.original.clone(),
                instruction: Instruction::from_node(node)?,
            })
        })
        .collect::<Result<Vec<_>, ParseError>>()?;
    Ok(Recipe { ast, steps })
}

/// What a stage builds on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Base {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// An image reference (local store, `oci:`, `docker-archive:` or a registry).
    Image(String),
    /// An earlier stage of the same recipe, by index.
    Stage(usize),
}

/// One build stage: a base and the steps after its `FROM`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// 0-based position in the recipe (usable as `--from=N`).
    pub index: usize,
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// What it builds on (after expanding global args).
    pub base: Base,
    /// `--platform`, expanded.
    pub platform: Option<String>,
    /// The `FROM` line.
    pub span: Span,
    /// The steps after `FROM`, typed but not expanded (see [`Stage::expand`]).
    pub steps: Vec<Step>,
    /// Global args and their values (defaults overridden by build args; `None` when unset),
    /// which a bare `ARG name` inside the stage picks up.
    pub global_args: Vec<(String, Option<String>)>,
}

/// The values visible to one instruction while a stage is walked. Lookups are by hash, so
/// walking a stage costs time linear in its size however many variables it sets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Scope {
    env: Vec<(String, String)>,
    args: Vec<(String, String)>,
    #[serde(skip)]
    env_index: HashMap<String, usize>,
    #[serde(skip)]
    args_index: HashMap<String, usize>,
}

impl Scope {
    /// Environment: the base image's then the stage's `ENV`s, in first-set order, unique keys.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// `ARG`s declared so far in the stage with their values (unset ones are absent).
    pub fn args(&self) -> &[(String, String)] {
        &self.args
    }

    fn set(
        list: &mut Vec<(String, String)>,
        index: &mut HashMap<String, usize>,
        key: &str,
        value: String,
    ) {
        match index.get(key) {
            Some(&i) => list[i].1 = value,
            None => {
                index.insert(key.to_string(), list.len());
                list.push((key.to_string(), value));
            }
        }
    }

    fn set_env(&mut self, key: &str, value: String) {
        Self::set(&mut self.env, &mut self.env_index, key, value);
    }

    fn set_arg(&mut self, key: &str, value: String) {
        Self::set(&mut self.args, &mut self.args_index, key, value);
    }

    fn unset_arg(&mut self, key: &str) {
        if self.args_index.remove(key).is_some() {
            self.args.retain(|(k, _)| k != key);
            self.args_index =
                self.args.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        }
    }
}

impl Lookup for Scope {
    /// ENV wins over ARG (BuildKit's rule for a name declared both ways).
    fn lookup(&self, name: &str) -> Option<&str> {
        self.env_index
            .get(name)
            .map(|&i| &self.env[i])
            .or_else(|| self.args_index.get(name).map(|&i| &self.args[i]))
            .map(|(_, v)| v.as_str())
    }
}

/// A stage after expansion: its steps and what is in scope after the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpandedStage {
    /// The steps with their words expanded.
    pub steps: Vec<Step>,
    /// The scope after the last step; its `env` is what a stage built `FROM` this one inherits.
    pub scope: Scope,
}

impl Stage {
    /// Walks the stage in order and expands each step with the values visible to it, starting
    /// from `base_env` (the base image's `Env`, as `KEY=VALUE` pairs split) and the build args.
    pub fn expand(
        &self,
        base_env: &[(String, String)],
        args: &BuildArgs,
        escape: char,
    ) -> Result<ExpandedStage, ParseError> {
        self.expand_with(base_env, args, escape, &mut |_, _| {})
    }

    /// Like [`Stage::expand`], and calls `visit` with each expanded step and the scope it saw
    /// (before its own effect): a builder passes the ARGs in scope to RUN this way.
    pub fn expand_with(
        &self,
        base_env: &[(String, String)],
        args: &BuildArgs,
        escape: char,
        visit: &mut dyn FnMut(&Step, &Scope),
    ) -> Result<ExpandedStage, ParseError> {
        let lexer = ShellLexer::new(escape);
        let mut scope = Scope::default();
        for (k, v) in base_env {
            scope.set_env(k, v.clone());
        }
        let builtins = builtin_args(args);
        let mut out = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let instruction = step.instruction.expand(&lexer, &scope, step.span)?;
            let expanded = Step { instruction, ..step.clone() };
            visit(&expanded, &scope);
            match &expanded.instruction {
                Instruction::Env(kvs) => {
                    for kv in kvs {
                        scope.set_env(&kv.key, kv.value.clone());
                    }
                }
                Instruction::Arg(decls) => {
                    for ArgDecl { name, default } in decls {
                        let global = self.global_args.iter().find(|(k, _)| k == name);
                        let value = args
                            .get(name)
                            .map(str::to_string)
                            .or_else(|| default.clone())
                            .or_else(|| global.and_then(|(_, v)| v.clone()))
                            .or_else(|| {
                                builtins.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
                            });
                        match value {
                            Some(v) => scope.set_arg(name, v),
                            None => scope.unset_arg(name),
                        }
                    }
                }
                _ => {}
            }
            out.push(expanded);
        }
        Ok(ExpandedStage { steps: out, scope })
    }

    /// Stages this one needs, by index: its base and every `COPY --from` / `RUN --mount from=`
    /// that names a stage. Words are expanded with `args` and the stage's own ENV/ARG values.
    pub fn dependencies(
        &self,
        stages: &[Stage],
        args: &BuildArgs,
        escape: char,
    ) -> Result<BTreeSet<usize>, ParseError> {
        let mut deps = BTreeSet::new();
        if let Base::Stage(i) = self.base {
            deps.insert(i);
        }
        for step in self.expand(&[], args, escape)?.steps {
            let span = step.span;
            let mut refs = Vec::new();
            match &step.instruction {
                Instruction::Copy(spec) | Instruction::Add(spec) => refs.extend(spec.from.clone()),
                Instruction::Run(run) => {
                    refs.extend(run.mounts.iter().filter_map(|m| m.from.clone()))
                }
                _ => {}
            }
            for r in refs {
                if let Some(i) = resolve_stage_ref(stages, &r, self.index, span)? {
                    deps.insert(i);
                }
            }
        }
        Ok(deps)
    }
}

/// Resolves a `--from` value as BuildKit does: an index of an earlier stage gives
/// `Some(index)`; a name gives the *last* stage of the recipe with that name (names may repeat:
/// the later definition wins), which must come before `current`; anything else is an image
/// reference (`None`). An index that is not an earlier stage, or a name only a later stage
/// has, is an error.
pub fn resolve_stage_ref(
    stages: &[Stage],
    reference: &str,
    current: usize,
    span: Span,
) -> Result<Option<usize>, ParseError> {
    if let Ok(i) = reference.parse::<usize>() {
        if i < current {
            return Ok(Some(i));
        }
        return Err(ParseError::new(
            ParseErrorKind::UnknownStage { name: reference.to_string() },
            span,
        ));
    }
    match find_stage(stages, reference) {
        Some(i) if i < current => Ok(Some(i)),
        Some(_) => Err(ParseError::new(
            ParseErrorKind::StageDefinedLater { name: reference.to_string() },
            span,
        )),
        None => Ok(None),
    }
}

/// The last of `stages` named `name` (case-insensitive), as BuildKit's by-name lookup.
fn find_stage(stages: &[Stage], name: &str) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    stages.iter().rev().find(|s| s.name.as_deref() == Some(lower.as_str())).map(|s| s.index)
}

/// The stages a build needs, in the order to build them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Every stage of the recipe.
    pub stages: Vec<Stage>,
    /// Index of the stage whose result is the image.
    pub target: usize,
    /// Indices of the stages the target needs, itself included, dependencies first.
    pub order: Vec<usize>,
    /// For each stage in `order`, the stages it needs.
    pub dependencies: BTreeMap<usize, BTreeSet<usize>>,
    /// Global ARGs and their values.
    pub global_args: Vec<(String, Option<String>)>,
}

impl Plan {
    /// Expands every stage in recipe order. A stage built on an earlier stage starts from that
    /// stage's final environment; one built on an image starts from `image_env(reference)`
    /// (the image's `Env`, which only a builder can know; `|_| Vec::new()` for none).
    pub fn expand_all(
        &self,
        args: &BuildArgs,
        escape: char,
        image_env: &dyn Fn(&str) -> Vec<(String, String)>,
    ) -> Result<Vec<ExpandedStage>, ParseError> {
        let mut out: Vec<ExpandedStage> = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let base_env = match &stage.base {
                Base::Scratch => Vec::new(),
                Base::Image(reference) => image_env(reference),
                Base::Stage(i) => out.get(*i).map(|s| s.scope.env.clone()).unwrap_or_default(),
            };
            out.push(stage.expand(&base_env, args, escape)?);
        }
        Ok(out)
    }
}

impl Recipe {
    /// The syntax tree.
    pub fn ast(&self) -> &Ast {
        &self.ast
    }

    /// Every instruction, typed, in order (before stage formation and expansion).
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Parser directives from the top of the file.
    pub fn directives(&self) -> &[Directive] {
        &self.ast.directives
    }

    /// The escape character in force.
    pub fn escape(&self) -> char {
        self.ast.escape
    }

    /// Global args (declared before the first `FROM`) with their values after `args`
    /// override the defaults; `None` for an arg with neither.
    pub fn global_args(
        &self,
        args: &BuildArgs,
    ) -> Result<Vec<(String, Option<String>)>, ParseError> {
        let lexer = ShellLexer::new(self.escape());
        let mut globals: Vec<(String, Option<String>)> = Vec::new();
        for step in &self.steps {
            match &step.instruction {
                Instruction::Arg(decls) => {
                    let scope = globals_scope(&globals, args);
                    let Instruction::Arg(decls2) =
                        Instruction::Arg(decls.clone()).expand(&lexer, &scope, step.span)?
                    else {
                        continue;
                    };
                    for d in decls2 {
                        let value = args.get(&d.name).map(str::to_string).or(d.default);
                        globals.retain(|(k, _)| *k != d.name);
                        globals.push((d.name, value));
                    }
                }
                Instruction::From { .. } => break,
                _ => {}
            }
        }
        Ok(globals)
    }

    /// Forms the build stages with `args`. Fails on a recipe with no `FROM`, an instruction
    /// other than `ARG` before the first `FROM`, or a variable required by `${v:?}` in a `FROM`
    /// line that is unset. Two stages may share a name (BuildKit's `DuplicateStageName` check
    /// warns): a `FROM name` refers to the latest stage of that name defined before it.
    pub fn stages(&self, args: &BuildArgs) -> Result<Vec<Stage>, ParseError> {
        self.stages_overridden(args, &BTreeSet::new())
    }

    /// [`Recipe::stages`] with the stage names in `overridden` taken away: BuildKit's named
    /// contexts (`--build-context NAME=...`) replace a stage of the same name, so `FROM NAME`
    /// and `--from=NAME` then name an image (the context), and the stage keeps no name.
    pub fn stages_overridden(
        &self,
        args: &BuildArgs,
        overridden: &BTreeSet<String>,
    ) -> Result<Vec<Stage>, ParseError> {
        let lexer = ShellLexer::new(self.escape());
        let globals = self.global_args(args)?;
        let scope = globals_scope(&globals, args);
        let mut stages: Vec<Stage> = Vec::new();
        for step in &self.steps {
            match &step.instruction {
                Instruction::From { .. } => {
                    let Instruction::From { image, platform, name } =
                        step.instruction.expand(&lexer, &scope, step.span)?
                    else {
                        continue;
                    };
                    let base = if image.eq_ignore_ascii_case("scratch") {
                        Base::Scratch
                    } else if let Some(i) = find_stage(&stages, &image) {
                        Base::Stage(i)
                    } else {
                        if image.is_empty() {
                            return Err(ParseError::new(
                                ParseErrorKind::MissingArguments {
                                    instruction: "FROM".into(),
                                    expected: "a base image (it expanded to an empty string)"
                                        .into(),
                                },
                                step.span,
                            ));
                        }
                        Base::Image(image)
                    };
                    let name = name.filter(|n| !overridden.contains(n));
                    stages.push(Stage {
                        index: stages.len(),
                        name,
                        base,
                        platform,
                        span: step.span,
                        steps: Vec::new(),
                        global_args: globals.clone(),
                    });
                }
                other => match stages.last_mut() {
                    Some(stage) => stage.steps.push(step.clone()),
                    None if matches!(other, Instruction::Arg(_)) => {}
                    None => {
                        return Err(ParseError::new(
                            ParseErrorKind::InstructionBeforeFrom {
                                instruction: other.keyword().to_string(),
                            },
                            step.span,
                        ))
                    }
                },
            }
        }
        if stages.is_empty() {
            return Err(ParseError::new(ParseErrorKind::NoStages, Span::default()));
        }
        Ok(stages)
    }

    /// Forms the stages and picks those needed for `target` (a stage name, the last stage of
    /// that name when several share it, or an index; the last stage when `None`),
    /// dependencies first.
    pub fn plan(&self, args: &BuildArgs, target: Option<&str>) -> Result<Plan, ParseError> {
        self.plan_overridden(args, target, &BTreeSet::new())
    }

    /// [`Recipe::plan`] with the stage names in `overridden` replaced by named contexts (see
    /// [`Recipe::stages_overridden`]).
    pub fn plan_overridden(
        &self,
        args: &BuildArgs,
        target: Option<&str>,
        overridden: &BTreeSet<String>,
    ) -> Result<Plan, ParseError> {
        let stages = self.stages_overridden(args, overridden)?;
        let target_index = match target {
            None => stages.len() - 1,
            Some(t) => find_stage(&stages, t)
                .or_else(|| t.parse::<usize>().ok().filter(|i| *i < stages.len()))
                .ok_or_else(|| {
                    ParseError::new(
                        ParseErrorKind::UnknownStage { name: t.to_string() },
                        Span::default(),
                    )
                })?,
        };
        let mut dependencies = BTreeMap::new();
        let mut order = Vec::new();
        let mut visiting = BTreeSet::new();
        self.visit(&stages, target_index, args, &mut dependencies, &mut order, &mut visiting)?;
        let global_args = self.global_args(args)?;
        Ok(Plan { stages, target: target_index, order, dependencies, global_args })
    }

    fn visit(
        &self,
        stages: &[Stage],
        index: usize,
        args: &BuildArgs,
        deps: &mut BTreeMap<usize, BTreeSet<usize>>,
        order: &mut Vec<usize>,
        visiting: &mut BTreeSet<usize>,
    ) -> Result<(), ParseError> {
        if deps.contains_key(&index) || !visiting.insert(index) {
            return Ok(());
        }
        let mine = stages[index].dependencies(stages, args, self.escape())?;
        for &d in &mine {
            self.visit(stages, d, args, deps, order, visiting)?;
        }
        deps.insert(index, mine);
        order.push(index);
        Ok(())
    }
}

/// Global args as a lookup scope for `FROM` lines (builtin platform args included, overridable).
fn globals_scope(globals: &[(String, Option<String>)], args: &BuildArgs) -> Scope {
    let mut scope = Scope::default();
    for (k, v) in builtin_args(args) {
        scope.set_arg(&k, v);
    }
    for (k, v) in globals {
        match v {
            Some(v) => scope.set_arg(k, v.clone()),
            None => scope.unset_arg(k),
        }
    }
    scope
}
