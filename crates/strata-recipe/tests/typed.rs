//! The typed layer: flags, argument checks, stage formation errors, and that nothing in the
//! whole pipeline (parse -> stages -> expand) panics on any input.

use proptest::prelude::*;
use strata_recipe::instruction::Healthcheck;
use strata_recipe::{parse, BuildArgs, Instruction, MountType, ParseErrorKind};

fn kind_of(src: &str) -> ParseErrorKind {
    match parse(src).and_then(|r| r.plan(&BuildArgs::new(), None).map(|_| ())) {
        Ok(()) => panic!("expected an error for {src:?}"),
        Err(e) => e.kind,
    }
}

fn single(src: &str) -> Instruction {
    let r = parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"));
    r.steps().last().unwrap().instruction.clone()
}

#[test]
fn unknown_repeated_and_valueless_flags_are_errors() {
    assert!(matches!(
        kind_of("FROM a\nCOPY --frm=x a b\n"),
        ParseErrorKind::InvalidFlag { flag, .. } if flag == "frm"
    ));
    assert!(matches!(
        kind_of("FROM a\nCOPY --from=x --from=y a b\n"),
        ParseErrorKind::InvalidFlag { flag, .. } if flag == "from"
    ));
    assert!(matches!(
        kind_of("FROM a\nCOPY --chown a b\n"),
        ParseErrorKind::InvalidFlag { flag, .. } if flag == "chown"
    ));
    assert!(matches!(
        kind_of("FROM a\nCOPY --link=maybe a b\n"),
        ParseErrorKind::InvalidFlag { flag, .. } if flag == "link"
    ));
    assert!(matches!(kind_of("FROM a\nWORKDIR --x=1 /a\n"), ParseErrorKind::InvalidFlag { .. }));
}

#[test]
fn repeatable_flags_accumulate() {
    let Instruction::Copy(c) =
        single("FROM a\nCOPY --exclude=*.md --exclude=*.txt --link=false . /\n")
    else {
        panic!()
    };
    assert_eq!(c.exclude, vec!["*.md", "*.txt"]);
    assert!(!c.link);
}

#[test]
fn run_mounts_parse_with_their_rules() {
    let Instruction::Run(r) = single(
        "FROM a\nRUN --mount=type=secret,id=tok,env=TOKEN --mount=type=tmpfs,target=/t,size=64m \
         --mount=type=cache,target=/c,id=apt,sharing=private,mode=0700,uid=1,gid=2 true\n",
    ) else {
        panic!()
    };
    assert_eq!(r.mounts[0].kind, MountType::Secret);
    assert_eq!(r.mounts[0].env.as_deref(), Some("TOKEN"));
    assert_eq!(r.mounts[1].size, Some(64 << 20));
    assert_eq!(r.mounts[2].mode, Some(0o700));
    assert_eq!((r.mounts[2].uid, r.mounts[2].gid), (Some(1), Some(2)));
    assert!(!r.mounts[2].read_only);
    for bad in [
        "type=volume,target=/x",
        "type=cache",
        "type=bind,target=/x,sharing=locked",
        "type=cache,target=/x,mode=9z",
        "type=bind,target=/x,bogus=1",
        "type=bind,target=/x,ro=perhaps",
        "type=tmpfs",
        "type=bind,target=/x,U",
        "type=cache,target=/x,U=1",
        "type=bind,target=/x,tmpcopyup",
    ] {
        let kind = kind_of(&format!("FROM a\nRUN --mount={bad} true\n"));
        assert!(
            matches!(&kind, ParseErrorKind::InvalidFlag { flag, .. } if flag == "mount"),
            "{bad}: {kind:?}"
        );
    }
    assert!(matches!(
        kind_of("FROM a\nRUN --network=bridge true\n"),
        ParseErrorKind::InvalidFlag { .. }
    ));
}

#[test]
fn bind_mounts_default_to_the_workdir_and_buildah_options_are_accepted() {
    // BuildKit: a bind mount with no target goes on the working directory.
    let Instruction::Run(r) = single("FROM a\nRUN --mount=type=bind,source=src make\n") else {
        panic!()
    };
    assert_eq!((r.mounts[0].target.as_deref(), r.mounts[0].source.as_deref()), (None, Some("src")));
    // buildah's SELinux labels and its chown-to-user option.
    let Instruction::Run(r) = single(
        "FROM a\nRUN --mount=type=bind,target=/s,z --mount=type=bind,target=/t,Z,relabel=private \
         --mount=type=cache,target=/c,U true\n",
    ) else {
        panic!()
    };
    assert!(!r.mounts[0].chown_to_user && !r.mounts[1].chown_to_user);
    assert!(r.mounts[2].chown_to_user);
    let Instruction::Run(r) = single(
        "FROM a\nRUN --mount=type=tmpfs,target=/a,tmpcopyup --mount=type=tmpfs,target=/b,notmpcopyup true\n",
    ) else {
        panic!()
    };
    assert!(r.mounts[0].tmpcopyup && !r.mounts[1].tmpcopyup);
}

#[test]
fn argument_shapes_are_checked() {
    assert!(matches!(kind_of("FROM a\nSHELL /bin/sh -c\n"), ParseErrorKind::InvalidJson { .. }));
    assert!(matches!(kind_of("FROM a\nCOPY onlyone\n"), ParseErrorKind::MissingArguments { .. }));
    assert!(matches!(kind_of("FROM a b\n"), ParseErrorKind::InvalidArgument { .. }));
    assert!(matches!(kind_of("FROM a AS 12\n"), ParseErrorKind::InvalidStageName { .. }));
    assert!(matches!(
        kind_of("FROM a\nADD --checksum=sha256:00 local.tar /\n"),
        ParseErrorKind::InvalidFlag { .. }
    ));
    assert!(matches!(
        kind_of("FROM a\nHEALTHCHECK --interval=5 CMD true\n"),
        ParseErrorKind::InvalidFlag { .. }
    ));
    assert!(matches!(
        kind_of("FROM a\nHEALTHCHECK NONE true\n"),
        ParseErrorKind::InvalidArgument { .. }
    ));
    assert!(matches!(
        kind_of("FROM a\nHEALTHCHECK CMD\n"),
        ParseErrorKind::MissingArguments { .. }
    ));
    assert!(matches!(kind_of("FROM a\nVOLUME [\"\"]\n"), ParseErrorKind::InvalidArgument { .. }));
}

#[test]
fn onbuild_rejects_forbidden_triggers() {
    for t in ["ONBUILD ONBUILD RUN x", "ONBUILD FROM x", "ONBUILD MAINTAINER me"] {
        let kind = kind_of(&format!("FROM a\n{t}\n"));
        assert!(
            matches!(
                kind,
                ParseErrorKind::InvalidOnbuild { .. } | ParseErrorKind::UnknownInstruction { .. }
            ),
            "{t}: {kind:?}"
        );
    }
    assert!(
        matches!(kind_of("FROM a\nONBUILD FROM x\n"), ParseErrorKind::InvalidOnbuild { trigger } if trigger == "FROM")
    );
}

/// `--chmod` is parsed once, into a typed mode: literal values when the recipe is parsed,
/// values naming variables when the stage is expanded; either way a bad value is an error
/// naming the line.
#[test]
fn chmod_is_parsed_into_a_mode() {
    let Instruction::Copy(c) = single("FROM a\nCOPY --chmod=u=rwX,go=rX a /b\n") else { panic!() };
    let m = c.chmod.as_ref().and_then(|f| f.mode()).expect("parsed");
    assert_eq!((m.apply(0o600, false), m.apply(0o700, true)), (0o644, 0o755));
    let Instruction::Add(c) = single("FROM a\nADD --chmod=0750 a /b\n") else { panic!() };
    assert_eq!(c.chmod.as_ref().and_then(|f| f.mode()).and_then(|m| m.octal()), Some(0o750));
    let Instruction::Copy(c) = single("FROM a\nCOPY --chmod= a /b\n") else { panic!() };
    assert_eq!(c.chmod, None, "an empty --chmod is none, as in BuildKit");

    let e = parse("FROM a\nRUN true\nCOPY --chmod=64a a /b\n").unwrap_err();
    assert!(matches!(&e.kind, ParseErrorKind::InvalidChmod { value, .. } if value == "64a"));
    assert_eq!(e.span.line, 3);

    let args = BuildArgs::new();
    let recipe = parse("FROM a\nARG M=go-w\nCOPY --chmod=$M a /b\n").unwrap();
    let plan = recipe.plan(&args, None).unwrap();
    let steps = plan.expand_all(&args, '\\', &|_| Vec::new()).unwrap().remove(0).steps;
    let Instruction::Copy(c) = &steps[1].instruction else { panic!() };
    assert_eq!(c.chmod.as_ref().map(|f| f.to_string()).as_deref(), Some("go-w"));
    assert!(c.chmod.as_ref().and_then(|f| f.mode()).is_some());

    let recipe = parse("FROM a\nARG M=8\nCOPY --chmod=${M} a /b\n").unwrap();
    let e = recipe.plan(&args, None).unwrap_err();
    assert!(matches!(&e.kind, ParseErrorKind::InvalidChmod { value, .. } if value == "8"));
    assert_eq!(e.span.line, 3);
}

#[test]
fn healthcheck_options() {
    let Instruction::Healthcheck(Healthcheck::Cmd { interval, retries, .. }) =
        single("FROM a\nHEALTHCHECK --interval=1m30s --retries=2 CMD curl -f localhost\n")
    else {
        panic!()
    };
    assert_eq!(interval.unwrap().as_secs(), 90);
    assert_eq!(retries, Some(2));
    assert_eq!(single("FROM a\nHEALTHCHECK NONE\n"), Instruction::Healthcheck(Healthcheck::None));
}

#[test]
fn stage_formation_errors() {
    assert_eq!(kind_of("ARG a=1\n"), ParseErrorKind::NoStages);
    assert_eq!(kind_of(""), ParseErrorKind::NoStages);
    assert!(matches!(kind_of("RUN x\nFROM a\n"), ParseErrorKind::InstructionBeforeFrom { .. }));
    assert!(matches!(
        kind_of("FROM a\nCOPY --from=3 /x /y\n"),
        ParseErrorKind::UnknownStage { name } if name == "3"
    ));
    let r = parse("FROM a AS one\nFROM one\nCOPY --from=one /a /b\n").unwrap();
    assert!(matches!(
        r.plan(&BuildArgs::new(), Some("two")).unwrap_err().kind,
        ParseErrorKind::UnknownStage { .. }
    ));
    assert_eq!(r.plan(&BuildArgs::new(), Some("0")).unwrap().order, vec![0]);
    assert_eq!(r.plan(&BuildArgs::new(), None).unwrap().order, vec![0, 1]);
}

/// BuildKit's rule for repeated names (its `DuplicateStageName` check only warns): `FROM name`
/// means the latest stage of that name defined before it, `--from=name` and `--target` the
/// last one in the recipe, which must come before the stage copying from it.
#[test]
fn duplicate_stage_names_the_later_one_wins() {
    let src = "FROM a AS x\nFROM b AS X\nFROM x\nCOPY --from=x /a /b\nFROM c AS y\n";
    let plan = parse(src).unwrap().plan(&BuildArgs::new(), Some("2")).unwrap();
    assert_eq!(plan.stages[1].name.as_deref(), Some("x"));
    assert_eq!(plan.stages[2].base, strata_recipe::Base::Stage(1));
    assert_eq!(plan.dependencies[&2].iter().copied().collect::<Vec<_>>(), vec![1]);
    let target = parse(src).unwrap().plan(&BuildArgs::new(), Some("X")).unwrap();
    assert_eq!((target.target, target.order.clone()), (1, vec![1]));

    // A later stage of the same name shadows the earlier one for --from: BuildKit refuses to
    // copy from a stage that is not yet defined.
    let later = "FROM a AS x\nFROM b\nCOPY --from=x /a /b\nFROM c AS x\n";
    let e = parse(later).unwrap().plan(&BuildArgs::new(), Some("1")).unwrap_err();
    assert_eq!(e.kind, ParseErrorKind::StageDefinedLater { name: "x".into() });
    assert_eq!(e.span.line, 3);
}

/// Names BuildKit refuses (`[a-z][a-z0-9-_.]*` only) but buildah accepts form stages that
/// FROM and --from find; only an all-digit name, which would read as an index, is refused.
#[test]
fn buildah_stage_names_are_accepted() {
    let src = "FROM a AS 1st:Build\nFROM b\nCOPY --from=1st:build /a /b\nFROM 1ST:BUILD\n";
    let plan = parse(src).unwrap().plan(&BuildArgs::new(), Some("1")).unwrap();
    assert_eq!(plan.stages[0].name.as_deref(), Some("1st:build"));
    assert_eq!(plan.dependencies[&1].iter().copied().collect::<Vec<_>>(), vec![0]);
    assert_eq!(plan.stages[2].base, strata_recipe::Base::Stage(0));
    assert_eq!(kind_of("FROM a AS 007\n"), ParseErrorKind::InvalidStageName { name: "007".into() });
}

#[test]
fn copy_from_an_image_is_not_a_stage_dependency() {
    let r = parse("FROM a AS build\nFROM b\nCOPY --from=alpine:3 /x /y\nCOPY --from=build /a /b\n")
        .unwrap();
    let plan = r.plan(&BuildArgs::new(), None).unwrap();
    assert_eq!(plan.dependencies[&1].iter().copied().collect::<Vec<_>>(), vec![0]);
}

#[test]
fn errors_render_with_file_line_and_caret() {
    let src = "FROM a\nCOPY --nope=1 a b\n";
    let e = parse(src).unwrap_err().with_source("Dockerfile", src);
    let text = e.to_string();
    assert!(text.contains(" --> Dockerfile:2:1"), "{text}");
    assert!(text.contains("2 | COPY --nope=1 a b"), "{text}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn pipeline_never_panics(src in "(FROM|ARG|ENV|RUN|COPY|ADD|ONBUILD|HEALTHCHECK|LABEL|EXPOSE|WORKDIR|USER|SHELL|VOLUME|\\$|\\{|\\}|:|-|\\?|=|#|/|%|\"|'|\\\\|\\[|\\]|<<|EOF|--mount=|--from=|type=|,| |\n|a|b|0){0,60}") {
        if let Ok(recipe) = parse(&src) {
            let _ = strata_recipe::check::run(&recipe, &strata_recipe::CheckOptions::default());
            let args: BuildArgs = [("a", "x")].into_iter().collect();
            if let Ok(plan) = recipe.plan(&args, None) {
                let _ = plan.expand_all(&args, recipe.escape(), &|_| Vec::new());
            }
        }
    }
}
