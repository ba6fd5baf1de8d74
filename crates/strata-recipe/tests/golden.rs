//! Golden cases written by us, in `testdata/recipes/<case>/`: a `Dockerfile`, optional `args`
//! (`K=V` lines, as `--build-arg`) and `target`, and `expected`, the plan rendered one line per
//! stage and per expanded step. `STRATA_BLESS=1 cargo test -p strata-recipe --test golden`
//! rewrites `expected` after a deliberate change; review the diff before committing it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use strata_recipe::{parse, BuildArgs};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/recipes")
}

fn render(dir: &Path) -> String {
    let src = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    let args: BuildArgs = std::fs::read_to_string(dir.join("args"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let target = std::fs::read_to_string(dir.join("target")).ok().map(|t| t.trim().to_string());
    let mut out = String::new();
    let result = parse(&src).and_then(|recipe| {
        let plan = recipe.plan(&args, target.as_deref())?;
        for (k, v) in &plan.global_args {
            writeln!(out, "global {k}={v:?}").unwrap();
        }
        writeln!(out, "target {} order {:?}", plan.target, plan.order).unwrap();
        let expanded = plan.expand_all(&args, recipe.escape(), &|_| Vec::new())?;
        for (stage, ex) in plan.stages.iter().zip(expanded) {
            writeln!(
                out,
                "stage {} name={:?} base={:?} platform={:?} needs={:?}",
                stage.index,
                stage.name,
                stage.base,
                stage.platform,
                plan.dependencies.get(&stage.index)
            )
            .unwrap();
            for step in ex.steps {
                let json = serde_json::to_string(&step.instruction).unwrap();
                writeln!(out, "  {}-{} {json}", step.span.line, step.end_line).unwrap();
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        writeln!(out, "error at {}: {}", e.span, e.kind).unwrap();
    }
    out
}

#[test]
fn golden_recipes() {
    let bless = std::env::var_os("STRATA_BLESS").is_some();
    let mut failures = Vec::new();
    let mut dirs: Vec<_> =
        std::fs::read_dir(cases_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    assert!(dirs.len() >= 7, "golden cases missing from {}", cases_dir().display());
    for dir in dirs {
        let got = render(&dir);
        let expected_path = dir.join("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            failures.push(format!("{}:\n--- expected\n{expected}--- got\n{got}", dir.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
