//! `strata parse`: the typed plan of a recipe, as text or as stable JSON.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde::Serialize;
use strata::recipe::{self, Base, BuildArgs, Directive, ParseError, Plan, Step};

/// Arguments of `strata parse`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recipe to read (default: CONTEXT/Dockerfile, else CONTEXT/Containerfile).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Print the plan as JSON (format documented in the README, `"version": 1`).
    #[arg(long)]
    pub json: bool,
    /// Set a build argument (`K=V`; a bare `K` takes the value from the environment).
    #[arg(long = "build-arg", value_name = "K=V")]
    pub build_args: Vec<String>,
    /// Plan only the stages this stage (name or index) needs.
    #[arg(long)]
    pub target: Option<String>,
    /// The build context directory.
    #[arg(default_value = ".")]
    pub context: PathBuf,
}

/// The JSON document `strata parse --json` prints. Field names and meanings are stable
/// within a `version`.
#[derive(Serialize)]
struct Output<'a> {
    version: u32,
    file: String,
    escape: char,
    directives: &'a [Directive],
    global_args: &'a [(String, Option<String>)],
    target: usize,
    order: &'a [usize],
    stages: Vec<StageOut<'a>>,
}

#[derive(Serialize)]
struct StageOut<'a> {
    index: usize,
    name: Option<&'a str>,
    base: &'a Base,
    platform: Option<&'a str>,
    line: usize,
    needed: bool,
    steps: Vec<StepOut>,
}

#[derive(Serialize)]
struct StepOut {
    line: usize,
    end_line: usize,
    original: String,
    instruction: recipe::Instruction,
}

/// Finds the recipe: `-f FILE` as given, else `Dockerfile`, else `Containerfile` in the context.
pub fn locate_recipe(file: Option<&Path>, context: &Path) -> anyhow::Result<PathBuf> {
    if let Some(f) = file {
        return Ok(f.to_path_buf());
    }
    for name in ["Dockerfile", "Containerfile"] {
        let p = context.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no Dockerfile or Containerfile in {} (use -f FILE)", context.display())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = locate_recipe(args.file.as_deref(), &args.context)?;
    let bytes =
        std::fs::read(&path).with_context(|| format!("cannot read recipe {}", path.display()))?;
    let name = path.display().to_string();
    let src = recipe::decode(bytes).map_err(|e| e.with_source(name.clone(), ""))?;
    let build_args: BuildArgs = super::parse_key_values(&args.build_args).into_iter().collect();
    let located = |e: ParseError| e.with_source(name.clone(), &src);
    let parsed = recipe::parse(&src).map_err(located)?;
    let plan = parsed.plan(&build_args, args.target.as_deref()).map_err(located)?;
    let expanded: Vec<Vec<Step>> = plan
        .expand_all(&build_args, parsed.escape(), &|_| Vec::new())
        .map_err(located)?
        .into_iter()
        .map(|s| s.steps)
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = json_output(&name, &parsed, &plan, expanded);
        let text = serde_json::to_string_pretty(&doc)?;
        writeln!(out, "{text}")?;
    } else {
        print_text(&mut out, &plan, &expanded)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn json_output<'a>(
    file: &str,
    parsed: &'a recipe::Recipe,
    plan: &'a Plan,
    expanded: Vec<Vec<Step>>,
) -> Output<'a> {
    let stages = plan
        .stages
        .iter()
        .zip(expanded)
        .map(|(s, steps)| StageOut {
            index: s.index,
            name: s.name.as_deref(),
            base: &s.base,
            platform: s.platform.as_deref(),
            line: s.span.line,
            needed: plan.order.contains(&s.index),
            steps: steps
                .into_iter()
                .map(|step| StepOut {
                    line: step.span.line,
                    end_line: step.end_line,
                    original: step.original,
                    instruction: step.instruction,
                })
                .collect(),
        })
        .collect();
    Output {
        version: 1,
        file: file.to_string(),
        escape: parsed.escape(),
        directives: parsed.directives(),
        global_args: &plan.global_args,
        target: plan.target,
        order: &plan.order,
        stages,
    }
}

fn print_text(out: &mut impl Write, plan: &Plan, expanded: &[Vec<Step>]) -> std::io::Result<()> {
    for (k, v) in &plan.global_args {
        match v {
            Some(v) => writeln!(out, "ARG {k}={v}")?,
            None => writeln!(out, "ARG {k}")?,
        }
    }
    for (stage, steps) in plan.stages.iter().zip(expanded) {
        let base = match &stage.base {
            Base::Scratch => "scratch".to_string(),
            Base::Image(i) => i.clone(),
            Base::Stage(i) => format!("stage {i}"),
        };
        let name = stage.name.as_deref().map(|n| format!(" \"{n}\"")).unwrap_or_default();
        let skipped = if plan.order.contains(&stage.index) { "" } else { " (not needed)" };
        let target = if stage.index == plan.target { " (target)" } else { "" };
        writeln!(out, "stage {}{name} FROM {base}{target}{skipped}", stage.index)?;
        if let Some(p) = &stage.platform {
            writeln!(out, "  platform {p}")?;
        }
        for step in steps {
            let line = step.span.line;
            writeln!(out, "  {line:>4}: {}", describe(&step.instruction))?;
        }
    }
    Ok(())
}

/// One line per instruction, with expanded arguments; JSON arrays for exec forms.
fn describe(i: &recipe::Instruction) -> String {
    use recipe::Instruction as I;
    let cmd = |c: &recipe::Command| match c {
        recipe::Command::Shell(s) => s.clone(),
        recipe::Command::Exec(v) => serde_json::to_string(v).unwrap_or_default(),
    };
    let kvs = |kvs: &[recipe::KeyValue]| {
        kvs.iter().map(|kv| format!("{}={:?}", kv.key, kv.value)).collect::<Vec<_>>().join(" ")
    };
    let copy = |s: &recipe::CopySpec| {
        let mut parts = Vec::new();
        if let Some(f) = &s.from {
            parts.push(format!("--from={f}"));
        }
        if let Some(c) = &s.chown {
            parts.push(format!("--chown={c}"));
        }
        if let Some(c) = &s.chmod {
            parts.push(format!("--chmod={c}"));
        }
        for src in &s.sources {
            parts.push(match src {
                recipe::Source::Path { path } => path.clone(),
                recipe::Source::Url { url } => url.clone(),
                recipe::Source::Heredoc { name, content, .. } => {
                    format!("<<{name} ({} bytes)", content.len())
                }
            });
        }
        parts.push(s.dest.clone());
        parts.join(" ")
    };
    let body = match i {
        I::From { image, name, .. } => match name {
            Some(n) => format!("{image} AS {n}"),
            None => image.clone(),
        },
        I::Run(r) => {
            let mut s = String::new();
            for m in &r.mounts {
                s.push_str(&format!("--mount=type={:?} ", m.kind).to_lowercase());
            }
            s.push_str(&cmd(&r.command));
            for h in &r.heredocs {
                s.push_str(&format!(" [heredoc {} ({} bytes)]", h.name, h.content.len()));
            }
            s
        }
        I::Cmd(c) | I::Entrypoint(c) => cmd(c),
        I::Label(k) | I::Env(k) => kvs(k),
        I::Maintainer(s) | I::User(s) | I::Workdir(s) | I::Stopsignal(s) => s.clone(),
        I::Expose(v) | I::Volume(v) => v.join(" "),
        I::Shell(v) => serde_json::to_string(v).unwrap_or_default(),
        I::Add(s) | I::Copy(s) => copy(s),
        I::Arg(decls) => decls
            .iter()
            .map(|d| match &d.default {
                Some(v) => format!("{}={v}", d.name),
                None => d.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        I::Onbuild { expression, .. } => expression.clone(),
        I::Healthcheck(h) => match h {
            recipe::instruction::Healthcheck::None => "NONE".into(),
            recipe::instruction::Healthcheck::Cmd { command, .. } => {
                format!("CMD {}", cmd(command))
            }
        },
    };
    format!("{} {body}", i.keyword())
}
