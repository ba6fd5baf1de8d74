//! Parser and `.dockerignore` speed: `cargo bench -p strata-recipe`.
//!
//! Prints medians of several runs for: parsing (syntax tree, typed recipe, stages with every
//! step expanded) a 10,000- and a 20,000-instruction recipe — the ratio between the two shows
//! whether cost is linear in input size — and matching 100,000 paths against 50 patterns.

// A benchmark reports on stdout.
#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use strata_recipe::{parse, parse_ast, BuildArgs, DockerIgnore};

const RUNS: usize = 7;

fn median(mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[RUNS / 2]
}

/// A recipe of `n` instructions mixing every common shape: ENV and ARG with expansions,
/// continuations, JSON and shell forms, COPY with flags, heredocs.
fn recipe(n: usize) -> String {
    let mut s =
        String::from("# syntax=docker/dockerfile:1\nARG BASE=debian:12\nFROM ${BASE} AS base\n");
    let mut i = 2;
    while i < n {
        let line = match i % 8 {
            0 => format!("ENV VAR{i}=value{i} LIBDIR=/opt/{i}/lib:${{HOME:-/root}}\n"),
            1 => format!("ARG A{i}=${{VAR{}:-default}}\n", i - 1),
            2 => format!("RUN apt-get update \\\n && apt-get install -y pkg{i} \\\n && rm -rf /var/lib/apt/lists/*\n"),
            3 => format!("COPY --chown=1000:1000 --chmod=0644 src/{i}/ /app/{i}/\n"),
            4 => format!("LABEL org.example.k{i}=\"v {i}\" other=${{VAR{}##*/}}\n", i - 4),
            5 => format!("RUN <<EOF\necho {i}\necho done\nEOF\n"),
            6 => format!("CMD [\"/bin/app{i}\", \"--flag\", \"{i}\"]\n"),
            _ => format!("WORKDIR /work/${{A{}}}/{i}\n", i - 6),
        };
        s.push_str(&line);
        i += 1;
    }
    s
}

fn bench_parse(n: usize) -> (Duration, Duration, Duration) {
    let src = recipe(n);
    let args = BuildArgs::new();
    let ast = median(|| {
        black_box(parse_ast(black_box(&src)).expect("parses"));
    });
    let typed = median(|| {
        black_box(parse(black_box(&src)).expect("parses"));
    });
    let full = median(|| {
        let r = parse(&src).expect("parses");
        let plan = r.plan(&args, None).expect("stages");
        black_box(plan.expand_all(&args, r.escape(), &|_| Vec::new()).expect("expands"));
    });
    (ast, typed, full)
}

fn main() {
    let (a10, t10, f10) = bench_parse(10_000);
    let (a20, t20, f20) = bench_parse(20_000);
    let (a40, _, f40) = bench_parse(40_000);
    println!("parse, median of {RUNS} runs");
    println!("  10,000 instructions: ast {a10:?}  typed {t10:?}  stages+expand {f10:?}");
    println!("  20,000 instructions: ast {a20:?}  typed {t20:?}  stages+expand {f20:?}");
    println!("  40,000 instructions: ast {a40:?}  stages+expand {f40:?}");
    println!(
        "  linearity (20k/10k, 2.0 = linear): ast {:.2}  stages+expand {:.2}",
        a20.as_secs_f64() / a10.as_secs_f64(),
        f20.as_secs_f64() / f10.as_secs_f64()
    );
    println!(
        "  linearity (40k/20k, 2.0 = linear): ast {:.2}  stages+expand {:.2}",
        a40.as_secs_f64() / a20.as_secs_f64(),
        f40.as_secs_f64() / f20.as_secs_f64()
    );

    let mut patterns = String::new();
    for i in 0..50 {
        let p = match i % 5 {
            0 => format!("**/*.tmp{i}"),
            1 => format!("build{i}/"),
            2 => format!("docs/**/draft{i}*.md"),
            3 => format!("!docs/**/keep{i}.md"),
            _ => format!("/vendor{i}/**/*.o"),
        };
        patterns.push_str(&p);
        patterns.push('\n');
    }
    let ignore = DockerIgnore::parse(&patterns).expect("patterns parse");
    let paths: Vec<String> = (0..100_000)
        .map(|i| match i % 4 {
            0 => format!("src/module{}/file{i}.rs", i % 97),
            1 => format!("docs/section{}/draft{}.md", i % 13, i % 50),
            2 => format!("build{}/out/obj{i}.o", i % 60),
            _ => format!("vendor{}/lib/deep/path/x{i}.tmp{}", i % 50, i % 50),
        })
        .collect();
    let mut excluded = 0;
    let t = median(|| {
        excluded = paths.iter().filter(|p| ignore.is_excluded(p)).count();
    });
    println!(
        "dockerignore: 100,000 paths x 50 patterns: {t:?} (median of {RUNS}; {excluded} excluded)"
    );
}
