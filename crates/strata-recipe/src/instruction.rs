//! Typed instructions: what each syntax node means.
//!
//! [`Instruction::from_node`] turns a [`Node`] into one of the 18 instruction types, parsing
//! and validating its `--flags` the way BuildKit's `BFlags` does (unknown flag, missing value,
//! repeated non-repeatable flag are errors) and checking the argument counts. Words are kept
//! as written, quotes included: variable expansion needs the build arguments and the
//! environment at that point of the stage, so it happens later, in [`Instruction::expand`],
//! called by [`crate::stage`] (and by the builder, which also knows the base image's env).
//!
//! Which words expand follows BuildKit's dispatcher: FROM (with global ARGs only), ENV, LABEL,
//! ARG, COPY/ADD (sources, destination, `--from`, `--chown`, `--chmod`, heredoc bodies whose
//! delimiter is unquoted), EXPOSE (split into words), VOLUME, USER, WORKDIR, STOPSIGNAL, and the
//! `--mount` options of RUN. RUN/CMD/ENTRYPOINT/SHELL/HEALTHCHECK commands are not expanded by
//! the builder: the shell in the container does that.

use std::time::Duration;

use serde::Serialize;

use crate::ast::{Heredoc, Node};
use crate::chmod::{Chmod, ChmodFlag};
use crate::error::{ParseError, ParseErrorKind, Span};
use crate::shell::{Lookup, ShellLexer};

/// A command as written for RUN, CMD, ENTRYPOINT or HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "form", content = "value", rename_all = "lowercase")]
pub enum Command {
    /// Shell form: one string, run through the stage's SHELL (default `/bin/sh -c`).
    Shell(String),
    /// Exec form: a JSON array, run directly.
    Exec(Vec<String>),
}

/// A `key=value` pair of ENV or LABEL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// One name declared by ARG, with its optional default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    /// The argument name.
    pub name: String,
    /// The default value, if `ARG name=default`.
    pub default: Option<String>,
}

/// A source of COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// A path (or wildcard pattern) in the context or in the `--from` stage/image.
    Path {
        /// The path as written (after expansion, once expanded).
        path: String,
    },
    /// A remote URL (ADD only): `http://`, `https://` or a git address.
    Url {
        /// The URL.
        url: String,
    },
    /// An inline file given by a heredoc (`COPY <<EOF /dst`).
    Heredoc {
        /// The file name (the heredoc delimiter).
        name: String,
        /// Its content.
        content: String,
        /// Whether variables in the content are expanded.
        expand: bool,
    },
}

/// `COPY` and `ADD` share their shape; the fields only one of them accepts are `None`/false
/// for the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopySpec {
    /// Sources, in order.
    pub sources: Vec<Source>,
    /// Destination path (a trailing `/` means "into this directory").
    pub dest: String,
    /// `--from=stage|index|image` (COPY only).
    pub from: Option<String>,
    /// `--chown=user[:group]`.
    pub chown: Option<String>,
    /// `--chmod=mode`, octal or symbolic, parsed ([`crate::chmod`]); an empty value is no
    /// `--chmod`, as in BuildKit.
    pub chmod: Option<ChmodFlag>,
    /// `--link`.
    pub link: bool,
    /// `--exclude=pattern`, repeatable.
    pub exclude: Vec<String>,
    /// `--parents` (COPY only).
    pub parents: bool,
    /// `--checksum=sha256:...` (ADD only).
    pub checksum: Option<String>,
    /// `--keep-git-dir` (ADD only).
    pub keep_git_dir: bool,
    /// `--unpack=true|false` (ADD only); `None` means the default (extract local archives).
    pub unpack: Option<bool>,
}

/// The `type=` of a RUN `--mount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// Bind a path from the context or from a stage/image.
    Bind,
    /// A persistent cache directory, kept in the store between builds.
    Cache,
    /// An empty tmpfs.
    Tmpfs,
    /// A secret file (or env variable) given with `--secret`.
    Secret,
    /// An SSH agent socket.
    Ssh,
}

/// How a cache mount is shared between concurrent builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheSharing {
    /// Several writers at once (the default).
    Shared,
    /// A fresh copy per concurrent writer.
    Private,
    /// One writer at a time.
    Locked,
}

/// A RUN `--mount=...` as BuildKit accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// `type=` (default `bind`).
    pub kind: MountType,
    /// `target=`/`dst=`/`destination=`. Secrets default to `/run/secrets/<id>`, ssh to a socket path.
    pub target: Option<String>,
    /// `source=`/`src=`.
    pub source: Option<String>,
    /// `from=`: stage or image to mount from.
    pub from: Option<String>,
    /// `readonly`/`ro` or the default for the type (bind: read-only).
    pub read_only: bool,
    /// `id=` (cache, secret, ssh).
    pub id: Option<String>,
    /// `sharing=` (cache).
    pub sharing: Option<CacheSharing>,
    /// `mode=` as octal (cache, secret, ssh).
    pub mode: Option<u32>,
    /// `uid=`.
    pub uid: Option<u32>,
    /// `gid=`.
    pub gid: Option<u32>,
    /// `required=` (secret, ssh).
    pub required: bool,
    /// `size=` in bytes (tmpfs).
    pub size: Option<u64>,
    /// `env=`: expose a secret as this environment variable instead of a file.
    pub env: Option<String>,
    /// buildah's `U`: the mount's source is owned by the step's user (cache mounts).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub chown_to_user: bool,
    /// buildah's `tmpcopyup` (tmpfs): the tmpfs starts with what the image holds at the
    /// target; `notmpcopyup`, the default, starts it empty.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tmpcopyup: bool,
}

/// RUN `--network=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The builder's default (the host network, like `docker build`).
    Default,
    /// A new network namespace with only loopback.
    None,
    /// The host's network.
    Host,
}

/// RUN `--security=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    /// The default sandbox.
    Sandbox,
    /// Privileged (needs the builder to allow it).
    Insecure,
}

/// A RUN step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSpec {
    /// The command.
    pub command: Command,
    /// Heredocs attached to the line (`RUN <<EOF`): bodies to feed the shell or to write as files.
    pub heredocs: Vec<Heredoc>,
    /// `--mount` options, in order.
    pub mounts: Vec<Mount>,
    /// `--network`.
    pub network: Option<NetworkMode>,
    /// `--security`.
    pub security: Option<SecurityMode>,
}

/// A HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    /// `HEALTHCHECK [opts] CMD command`.
    Cmd {
        /// The probe command.
        command: Command,
        /// `--interval`.
        #[serde(with = "opt_duration")]
        interval: Option<Duration>,
        /// `--timeout`.
        #[serde(with = "opt_duration")]
        timeout: Option<Duration>,
        /// `--start-period`.
        #[serde(with = "opt_duration")]
        start_period: Option<Duration>,
        /// `--start-interval`.
        #[serde(with = "opt_duration")]
        start_interval: Option<Duration>,
        /// `--retries`.
        retries: Option<u32>,
    },
}

mod opt_duration {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_nanos() as u64)),
            None => s.serialize_none(),
        }
    }
}

/// One instruction with its typed arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "instruction", content = "args", rename_all = "UPPERCASE")]
pub enum Instruction {
    /// `FROM [--platform=p] image [AS name]`.
    From {
        /// The base: an image reference, a stage name, or `scratch`.
        image: String,
        /// `--platform`.
        platform: Option<String>,
        /// `AS name`, lower-cased.
        name: Option<String>,
    },
    /// `RUN`.
    Run(RunSpec),
    /// `CMD`.
    Cmd(Command),
    /// `LABEL k=v ...`.
    Label(Vec<KeyValue>),
    /// `MAINTAINER name` (deprecated; recorded as a label by builders).
    Maintainer(String),
    /// `EXPOSE port[/proto] ...`.
    Expose(Vec<String>),
    /// `ENV k=v ...`.
    Env(Vec<KeyValue>),
    /// `ADD`.
    Add(CopySpec),
    /// `COPY`.
    Copy(CopySpec),
    /// `ENTRYPOINT`.
    Entrypoint(Command),
    /// `VOLUME path ...`.
    Volume(Vec<String>),
    /// `USER user[:group]`.
    User(String),
    /// `WORKDIR path`.
    Workdir(String),
    /// `ARG name[=default] ...`.
    Arg(Vec<ArgDecl>),
    /// `ONBUILD trigger`: stored in the image, run when it is used as a base.
    Onbuild {
        /// The trigger instruction, parsed.
        trigger: Box<Instruction>,
        /// Its text as it goes into the image config (`RUN echo hi`).
        expression: String,
    },
    /// `STOPSIGNAL signal`.
    Stopsignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `SHELL ["executable", "params"]`.
    Shell(Vec<String>),
}

impl Instruction {
    /// The instruction keyword, upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::From { .. } => "FROM",
            Instruction::Run(_) => "RUN",
            Instruction::Cmd(_) => "CMD",
            Instruction::Label(_) => "LABEL",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Env(_) => "ENV",
            Instruction::Add(_) => "ADD",
            Instruction::Copy(_) => "COPY",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Volume(_) => "VOLUME",
            Instruction::User(_) => "USER",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::Arg(_) => "ARG",
            Instruction::Onbuild { .. } => "ONBUILD",
            Instruction::Stopsignal(_) => "STOPSIGNAL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Shell(_) => "SHELL",
        }
    }

    /// Gives `node` its typed meaning. Words are not expanded yet (see [`Instruction::expand`]).
    pub fn from_node(node: &Node) -> Result<Instruction, ParseError> {
        let ctx = NodeCtx { node, kw: node.keyword.to_ascii_uppercase() };
        ctx.build()
    }

    /// Expands variables in the words this instruction expands, with `env` as the values
    /// visible to it. Every word sees the same `env`: within one instruction, a variable has
    /// one value (`ENV a=1 b=$a` gives `b` the value `a` had before the instruction).
    pub fn expand(
        &self,
        lexer: &ShellLexer,
        env: &dyn Lookup,
        span: Span,
    ) -> Result<Instruction, ParseError> {
        let word = |w: &str| -> Result<String, ParseError> {
            lexer.expand_word(w, env).map(|e| e.value).map_err(|k| ParseError::new(k, span))
        };
        let opt = |w: &Option<String>| -> Result<Option<String>, ParseError> {
            w.as_deref().map(word).transpose()
        };
        Ok(match self {
            Instruction::From { image, platform, name } => Instruction::From {
                image: word(image)?,
                platform: opt(platform)?,
                name: name.clone(),
            },
            Instruction::Env(kvs) => Instruction::Env(expand_kvs(kvs, &word)?),
            Instruction::Label(kvs) => Instruction::Label(expand_kvs(kvs, &word)?),
            Instruction::Arg(decls) => Instruction::Arg(
                decls
                    .iter()
                    .map(|d| Ok(ArgDecl { name: word(&d.name)?, default: opt(&d.default)? }))
                    .collect::<Result<_, ParseError>>()?,
            ),
            Instruction::Copy(spec) => Instruction::Copy(expand_copy(spec, lexer, env, span)?),
            Instruction::Add(spec) => Instruction::Add(expand_copy(spec, lexer, env, span)?),
            Instruction::Expose(ports) => {
                let mut out = Vec::new();
                for p in ports {
                    out.extend(lexer.expand_words(p, env).map_err(|k| ParseError::new(k, span))?);
                }
                Instruction::Expose(out)
            }
            Instruction::Volume(v) => {
                Instruction::Volume(v.iter().map(|w| word(w)).collect::<Result<_, _>>()?)
            }
            Instruction::User(u) => Instruction::User(word(u)?),
            Instruction::Workdir(w) => Instruction::Workdir(word(w)?),
            Instruction::Stopsignal(s) => Instruction::Stopsignal(word(s)?),
            Instruction::Run(run) => {
                let mut run = run.clone();
                for m in &mut run.mounts {
                    m.target = opt(&m.target)?;
                    m.source = opt(&m.source)?;
                    m.from = opt(&m.from)?;
                    m.id = opt(&m.id)?;
                    m.env = opt(&m.env)?;
                }
                Instruction::Run(run)
            }
            other => other.clone(),
        })
    }
}

fn expand_kvs(
    kvs: &[KeyValue],
    word: &dyn Fn(&str) -> Result<String, ParseError>,
) -> Result<Vec<KeyValue>, ParseError> {
    kvs.iter().map(|kv| Ok(KeyValue { key: word(&kv.key)?, value: word(&kv.value)? })).collect()
}

fn expand_copy(
    spec: &CopySpec,
    lexer: &ShellLexer,
    env: &dyn Lookup,
    span: Span,
) -> Result<CopySpec, ParseError> {
    let word = |w: &str| -> Result<String, ParseError> {
        lexer.expand_word(w, env).map(|e| e.value).map_err(|k| ParseError::new(k, span))
    };
    let opt = |w: &Option<String>| -> Result<Option<String>, ParseError> {
        w.as_deref().map(word).transpose()
    };
    let mut out = spec.clone();
    for s in &mut out.sources {
        match s {
            Source::Path { path } => *path = word(path)?,
            Source::Url { url } => *url = word(url)?,
            Source::Heredoc { content, expand, .. } => {
                if *expand {
                    *content = expand_heredoc(lexer, content, env)
                        .map_err(|k| ParseError::new(k, span))?;
                }
            }
        }
    }
    out.dest = word(&spec.dest)?;
    out.from = opt(&spec.from)?;
    out.chown = opt(&spec.chown)?;
    if let Some(ChmodFlag::Unexpanded(w)) = &spec.chmod {
        out.chmod = parse_chmod(&word(w)?).map_err(|kind| ParseError::new(kind, span))?;
    }
    out.checksum = opt(&spec.checksum)?;
    out.exclude = spec.exclude.iter().map(|w| word(w)).collect::<Result<_, _>>()?;
    Ok(out)
}

/// A `--chmod` value as written: no flag when empty (BuildKit ignores `--chmod=`), left for
/// [`Instruction::expand`] when it names a variable, else parsed now.
fn chmod_flag(value: &str) -> Result<Option<ChmodFlag>, ParseErrorKind> {
    if value.contains('$') {
        return Ok(Some(ChmodFlag::Unexpanded(value.to_string())));
    }
    parse_chmod(value)
}

fn parse_chmod(value: &str) -> Result<Option<ChmodFlag>, ParseErrorKind> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse::<Chmod>().map(|m| Some(ChmodFlag::Mode(m)))
}

/// Expands `$var` in a heredoc body the way BuildKit does for COPY: quotes in the body are
/// content, not syntax, so each line is expanded as if it were inside double quotes.
fn expand_heredoc(
    lexer: &ShellLexer,
    content: &str,
    env: &dyn Lookup,
) -> Result<String, ParseErrorKind> {
    let mut out = String::with_capacity(content.len());
    for line in content.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        // Protect literal double quotes and escapes so the lexer only substitutes variables.
        let mut quoted = String::with_capacity(body.len() + 2);
        quoted.push('"');
        for c in body.chars() {
            if c == '"' || c == lexer.escape() {
                quoted.push(lexer.escape());
            }
            quoted.push(c);
        }
        quoted.push('"');
        out.push_str(&lexer.expand_word(&quoted, env)?.value);
        out.push_str(nl);
    }
    Ok(out)
}

/// Which flags an instruction accepts, and of what kind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    /// `--name=value`, at most once.
    Str,
    /// `--name` or `--name=true|false`, at most once.
    Bool,
    /// `--name=value`, repeatable.
    List,
}

fn allowed_flags(kw: &str) -> &'static [(&'static str, FlagKind)] {
    use FlagKind::*;
    match kw {
        "FROM" => &[("platform", Str)],
        "RUN" => &[("mount", List), ("network", Str), ("security", Str)],
        "COPY" => &[
            ("from", Str),
            ("chown", Str),
            ("chmod", Str),
            ("link", Bool),
            ("exclude", List),
            ("parents", Bool),
        ],
        "ADD" => &[
            ("chown", Str),
            ("chmod", Str),
            ("link", Bool),
            ("checksum", Str),
            ("keep-git-dir", Bool),
            ("unpack", Bool),
            ("exclude", List),
        ],
        "HEALTHCHECK" => &[
            ("interval", Str),
            ("timeout", Str),
            ("start-period", Str),
            ("start-interval", Str),
            ("retries", Str),
        ],
        _ => &[],
    }
}

/// Parsed `--flags` of one instruction.
#[derive(Default)]
struct Flags {
    values: Vec<(String, String)>,
}

impl Flags {
    fn str(&self, name: &str) -> Option<String> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }
    fn bool(&self, name: &str) -> bool {
        self.values.iter().any(|(n, v)| n == name && v == "true")
    }
    fn opt_bool(&self, name: &str) -> Option<bool> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| v == "true")
    }
    fn list(&self, name: &str) -> Vec<String> {
        self.values.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect()
    }
}

struct NodeCtx<'a> {
    node: &'a Node,
    kw: String,
}

impl NodeCtx<'_> {
    fn err(&self, kind: ParseErrorKind) -> ParseError {
        ParseError::new(kind, self.node.span).with_len(self.node.keyword.chars().count())
    }

    fn bad_flag(&self, flag: &str, reason: impl Into<String>) -> ParseError {
        self.err(ParseErrorKind::InvalidFlag {
            instruction: self.kw.clone(),
            flag: flag.to_string(),
            reason: reason.into(),
        })
    }

    fn invalid(&self, reason: impl Into<String>) -> ParseError {
        self.err(ParseErrorKind::InvalidArgument {
            instruction: self.kw.clone(),
            reason: reason.into(),
        })
    }

    fn missing(&self, expected: &str) -> ParseError {
        self.err(ParseErrorKind::MissingArguments {
            instruction: self.kw.clone(),
            expected: expected.to_string(),
        })
    }

    /// BuildKit's BFlags rules: `--name` alone is a bool `true`; `--name=v` sets a value;
    /// unknown names, a missing value for a string flag, a non-boolean value for a bool flag
    /// and a repeated non-list flag are errors.
    fn flags(&self) -> Result<Flags, ParseError> {
        let allowed = allowed_flags(&self.kw);
        let mut flags = Flags::default();
        for raw in &self.node.flags {
            let body = raw.strip_prefix("--").unwrap_or(raw);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(_, kind)) = allowed.iter().find(|(n, _)| *n == name) else {
                return Err(self.bad_flag(name, "unknown flag"));
            };
            if kind != FlagKind::List && flags.values.iter().any(|(n, _)| n == name) {
                return Err(self.bad_flag(name, "specified more than once"));
            }
            let value = match (kind, value) {
                (FlagKind::Bool, None) => "true".to_string(),
                (FlagKind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "true" | "1" => "true".to_string(),
                    "false" | "0" => "false".to_string(),
                    _ => return Err(self.bad_flag(name, format!("expects a boolean, got `{v}`"))),
                },
                (_, None) => return Err(self.bad_flag(name, "missing a value")),
                (_, Some(v)) => v.to_string(),
            };
            flags.values.push((name.to_string(), value));
        }
        Ok(flags)
    }

    fn command(&self, args: &[String]) -> Command {
        if self.node.json {
            Command::Exec(args.to_vec())
        } else {
            Command::Shell(args.join(" "))
        }
    }

    fn build(&self) -> Result<Instruction, ParseError> {
        let flags = self.flags()?;
        let args = &self.node.args;
        let single = |what: &str| -> Result<String, ParseError> {
            if args.is_empty() || args.iter().all(|a| a.is_empty()) {
                Err(self.missing(what))
            } else {
                Ok(args.join(" "))
            }
        };
        Ok(match self.kw.as_str() {
            "FROM" => self.from(args, &flags)?,
            "RUN" => self.run(args, &flags)?,
            "CMD" => Instruction::Cmd(self.command(args)),
            "ENTRYPOINT" => Instruction::Entrypoint(self.command(args)),
            "SHELL" => {
                if !self.node.json {
                    return Err(
                        self.err(ParseErrorKind::InvalidJson { instruction: self.kw.clone() })
                    );
                }
                if args.is_empty() {
                    return Err(self.missing("at least one argument"));
                }
                Instruction::Shell(args.clone())
            }
            "ENV" => Instruction::Env(self.key_values(args)?),
            "LABEL" => Instruction::Label(self.key_values(args)?),
            "MAINTAINER" => Instruction::Maintainer(single("exactly one argument")?),
            "EXPOSE" => {
                if args.is_empty() {
                    return Err(self.missing("at least one argument"));
                }
                Instruction::Expose(args.clone())
            }
            "VOLUME" => {
                if args.is_empty() {
                    return Err(self.missing("at least one argument"));
                }
                if args.iter().any(|a| a.trim().is_empty()) {
                    return Err(self.invalid("VOLUME specified can not be an empty string"));
                }
                Instruction::Volume(args.clone())
            }
            "USER" => Instruction::User(single("exactly one argument")?),
            "WORKDIR" => Instruction::Workdir(single("exactly one argument")?),
            "STOPSIGNAL" => Instruction::Stopsignal(single("exactly one argument")?),
            "ARG" => Instruction::Arg(self.args_decl(args)?),
            "COPY" => Instruction::Copy(self.copy(args, &flags, false)?),
            "ADD" => Instruction::Add(self.copy(args, &flags, true)?),
            "HEALTHCHECK" => Instruction::Healthcheck(self.healthcheck(args, &flags)?),
            "ONBUILD" => self.onbuild()?,
            other => {
                return Err(self.err(ParseErrorKind::UnknownInstruction { name: other.to_string() }))
            }
        })
    }

    fn from(&self, args: &[String], flags: &Flags) -> Result<Instruction, ParseError> {
        let name = match args {
            [_] => None,
            [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                // BuildKit refuses names outside `[a-z][a-z0-9-_.]*`, buildah takes any word;
                // such a name is accepted (the check `NonPortableStageName` warns) unless it
                // is all digits, which `--from=N` would read as a stage index.
                let name = name.to_ascii_lowercase();
                if name.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(self.err(ParseErrorKind::InvalidStageName { name }));
                }
                Some(name)
            }
            [] => return Err(self.missing("a base image")),
            _ => return Err(self.invalid("FROM requires either one or three arguments")),
        };
        Ok(Instruction::From { image: args[0].clone(), platform: flags.str("platform"), name })
    }

    fn run(&self, args: &[String], flags: &Flags) -> Result<Instruction, ParseError> {
        if args.is_empty() && self.node.heredocs.is_empty() {
            return Err(self.missing("at least one argument"));
        }
        let mounts =
            flags.list("mount").iter().map(|m| self.mount(m)).collect::<Result<Vec<_>, _>>()?;
        let network = match flags.str("network").as_deref() {
            None => None,
            Some("default") => Some(NetworkMode::Default),
            Some("none") => Some(NetworkMode::None),
            Some("host") => Some(NetworkMode::Host),
            Some(v) => {
                return Err(self.bad_flag("network", format!("unsupported network mode `{v}`")))
            }
        };
        let security = match flags.str("security").as_deref() {
            None => None,
            Some("sandbox") => Some(SecurityMode::Sandbox),
            Some("insecure") => Some(SecurityMode::Insecure),
            Some(v) => {
                return Err(self.bad_flag("security", format!("unsupported security mode `{v}`")))
            }
        };
        Ok(Instruction::Run(RunSpec {
            command: self.command(args),
            heredocs: self.node.heredocs.clone(),
            mounts,
            network,
            security,
        }))
    }

    /// Parses one `--mount` value: comma-separated `key=value` (CSV with `"` quoting, like
    /// BuildKit), where `readonly`/`ro`/`rw`/`required` may stand alone.
    fn mount(&self, spec: &str) -> Result<Mount, ParseError> {
        let bad = |reason: String| self.bad_flag("mount", reason);
        let fields = split_csv(spec).map_err(|r| bad(r.to_string()))?;
        let mut kind = MountType::Bind;
        for f in &fields {
            if let Some(v) = f.strip_prefix("type=") {
                kind = match v.to_ascii_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    _ => return Err(bad(format!("unsupported mount type `{v}`"))),
                };
            }
        }
        let mut m = Mount {
            kind,
            target: None,
            source: None,
            from: None,
            read_only: kind == MountType::Bind,
            id: None,
            sharing: None,
            mode: None,
            uid: None,
            gid: None,
            required: false,
            size: None,
            env: None,
            chown_to_user: false,
            tmpcopyup: false,
        };
        for f in &fields {
            let (key, value) = match f.split_once('=') {
                Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
                None => (f.to_ascii_lowercase(), None),
            };
            let need = |v: Option<String>| v.ok_or_else(|| bad(format!("`{key}` needs a value")));
            let boolean = |v: &Option<String>| -> Result<bool, ParseError> {
                match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    None | Some("true") | Some("1") => Ok(true),
                    Some("false") | Some("0") => Ok(false),
                    Some(o) => Err(bad(format!("`{key}` expects a boolean, got `{o}`"))),
                }
            };
            let number = |v: Option<String>, radix: u32| -> Result<u32, ParseError> {
                let v = need(v)?;
                u32::from_str_radix(&v, radix).map_err(|_| bad(format!("invalid {key} `{v}`")))
            };
            match key.as_str() {
                "type" => {}
                "target" | "dst" | "destination" => m.target = Some(need(value)?),
                "source" | "src" => m.source = Some(need(value)?),
                "from" => m.from = Some(need(value)?),
                "readonly" | "ro" => m.read_only = boolean(&value)?,
                "readwrite" | "rw" => m.read_only = !boolean(&value)?,
                "id" => m.id = Some(need(value)?),
                "sharing" => {
                    m.sharing = Some(match need(value)?.as_str() {
                        "shared" => CacheSharing::Shared,
                        "private" => CacheSharing::Private,
                        "locked" => CacheSharing::Locked,
                        o => return Err(bad(format!("unsupported sharing value `{o}`"))),
                    })
                }
                "mode" => m.mode = Some(number(value, 8)?),
                "uid" => m.uid = Some(number(value, 10)?),
                "gid" => m.gid = Some(number(value, 10)?),
                "required" => m.required = boolean(&value)?,
                "size" => {
                    let v = need(value)?;
                    m.size = Some(parse_size(&v).ok_or_else(|| bad(format!("invalid size `{v}`")))?)
                }
                "env" => m.env = Some(need(value)?),
                // buildah's SELinux labels (`z` shared, `Z` private, `relabel=`): nothing to
                // relabel without SELinux, which is how buildah itself treats them then.
                "relabel" | "z" => {}
                "u" if value.is_none() => m.chown_to_user = true,
                "tmpcopyup" if value.is_none() => m.tmpcopyup = true,
                "notmpcopyup" if value.is_none() => m.tmpcopyup = false,
                _ => return Err(bad(format!("unexpected key `{key}`"))),
            }
        }
        let allowed_for = |k: MountType, what: &str, set: bool| -> Result<(), ParseError> {
            if set && m.kind != k {
                return Err(bad(format!("`{what}` is not allowed for this mount type")));
            }
            Ok(())
        };
        allowed_for(MountType::Cache, "sharing", m.sharing.is_some())?;
        allowed_for(MountType::Tmpfs, "size", m.size.is_some())?;
        allowed_for(MountType::Secret, "env", m.env.is_some())?;
        allowed_for(MountType::Cache, "U", m.chown_to_user)?;
        allowed_for(MountType::Tmpfs, "tmpcopyup", m.tmpcopyup)?;
        match m.kind {
            MountType::Secret => {
                if m.target.is_none() && m.env.is_none() && m.id.is_none() {
                    return Err(bad("a secret mount needs `id`, `target` or `env`".into()));
                }
                m.read_only = true;
            }
            MountType::Ssh => m.read_only = true,
            // BuildKit's frontend resolves a bind target against the working directory, so
            // none at all mounts the source on the working directory itself.
            MountType::Bind => {}
            MountType::Cache | MountType::Tmpfs => {
                if m.target.is_none() {
                    return Err(bad("`target` is required".into()));
                }
            }
        }
        Ok(m)
    }

    fn key_values(&self, args: &[String]) -> Result<Vec<KeyValue>, ParseError> {
        if args.is_empty() {
            return Err(self.missing("at least one argument"));
        }
        if args.len() % 3 != 0 {
            return Err(self.invalid("malformed key/value list"));
        }
        let mut out = Vec::new();
        for triple in args.chunks(3) {
            if triple[0].is_empty() {
                return Err(self.invalid("a key cannot be empty"));
            }
            out.push(KeyValue { key: triple[0].clone(), value: triple[1].clone() });
        }
        Ok(out)
    }

    fn args_decl(&self, args: &[String]) -> Result<Vec<ArgDecl>, ParseError> {
        if args.is_empty() {
            return Err(self.missing("at least one argument"));
        }
        args.iter()
            .map(|a| {
                let (name, default) = match a.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (a.clone(), None),
                };
                if name.is_empty() {
                    return Err(self.invalid(format!("`{a}`: an ARG needs a name")));
                }
                Ok(ArgDecl { name, default })
            })
            .collect()
    }

    fn copy(&self, args: &[String], flags: &Flags, is_add: bool) -> Result<CopySpec, ParseError> {
        if args.len() < 2 {
            return Err(self.missing(
                "at least two arguments: a source and a destination (the destination could not be determined)",
            ));
        }
        let (dest, srcs) = args.split_last().map(|(d, s)| (d.clone(), s)).unwrap_or_default();
        let mut sources = Vec::new();
        for s in srcs {
            let heredoc = s
                .strip_prefix("<<")
                .map(|n| n.trim_start_matches('-').trim_matches(|c| c == '"' || c == '\''))
                .and_then(|n| self.node.heredocs.iter().find(|h| h.name == n));
            sources.push(match heredoc {
                Some(h) => Source::Heredoc {
                    name: h.name.clone(),
                    content: h.content.clone(),
                    expand: h.expand,
                },
                None if is_add && is_remote(s) => Source::Url { url: s.clone() },
                None => Source::Path { path: s.clone() },
            });
        }
        let checksum = flags.str("checksum");
        if checksum.is_some() && !sources.iter().all(|s| matches!(s, Source::Url { .. })) {
            return Err(self.bad_flag("checksum", "only supported for URL sources"));
        }
        Ok(CopySpec {
            sources,
            dest,
            from: flags.str("from"),
            chown: flags.str("chown"),
            chmod: match flags.str("chmod") {
                Some(v) => chmod_flag(&v).map_err(|k| self.err(k))?,
                None => None,
            },
            link: flags.bool("link"),
            exclude: flags.list("exclude"),
            parents: flags.bool("parents"),
            checksum,
            keep_git_dir: flags.bool("keep-git-dir"),
            unpack: flags.opt_bool("unpack"),
        })
    }

    fn healthcheck(&self, args: &[String], flags: &Flags) -> Result<Healthcheck, ParseError> {
        let Some(kind) = args.first() else {
            return Err(self.missing("NONE or CMD followed by a command"));
        };
        match kind.to_ascii_uppercase().as_str() {
            "NONE" => {
                if args.len() > 1 || !self.node.flags.is_empty() {
                    return Err(self.invalid("HEALTHCHECK NONE takes no other arguments"));
                }
                Ok(Healthcheck::None)
            }
            "CMD" => {
                let rest = &args[1..];
                if rest.is_empty() || rest.iter().all(|a| a.is_empty()) {
                    return Err(self.missing("a command after CMD"));
                }
                let duration = |name: &str| -> Result<Option<Duration>, ParseError> {
                    let Some(v) = flags.str(name) else { return Ok(None) };
                    let d = parse_go_duration(&v)
                        .ok_or_else(|| self.bad_flag(name, format!("invalid duration `{v}`")))?;
                    if d != Duration::ZERO && d < Duration::from_millis(1) {
                        return Err(self.bad_flag(name, "cannot be less than 1ms"));
                    }
                    Ok(Some(d))
                };
                let retries = match flags.str("retries") {
                    None => None,
                    Some(v) => Some(v.parse::<u32>().map_err(|_| {
                        self.bad_flag(
                            "retries",
                            format!("expects a non-negative integer, got `{v}`"),
                        )
                    })?),
                };
                Ok(Healthcheck::Cmd {
                    command: self.command(rest),
                    interval: duration("interval")?,
                    timeout: duration("timeout")?,
                    start_period: duration("start-period")?,
                    start_interval: duration("start-interval")?,
                    retries,
                })
            }
            other => Err(self.invalid(format!("unknown type `{other}`: expected CMD or NONE"))),
        }
    }

    fn onbuild(&self) -> Result<Instruction, ParseError> {
        let Some(child) = &self.node.child else {
            return Err(self.missing("a trigger instruction"));
        };
        let trigger_kw = child.keyword.to_ascii_uppercase();
        if matches!(trigger_kw.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
            return Err(ParseError::new(
                ParseErrorKind::InvalidOnbuild { trigger: trigger_kw },
                child.span,
            )
            .with_len(child.keyword.chars().count()));
        }
        let trigger = Instruction::from_node(child)?;
        Ok(Instruction::Onbuild {
            trigger: Box::new(trigger),
            expression: onbuild_expression(self.node),
        })
    }
}

/// The trigger text Docker stores in the config's `OnBuild`: the original instruction with
/// the leading `ONBUILD` keyword removed.
fn onbuild_expression(node: &Node) -> String {
    let original = node.original.trim_start();
    let rest = original.get(node.keyword.len()..).unwrap_or("");
    rest.trim().to_string()
}

/// Whether BuildKit accepts `name` as a stage name: `^[a-z][a-z0-9-_.]*$` after lower-casing.
/// strata also accepts the names buildah does (any word that is not all digits); the check
/// `NonPortableStageName` ([`crate::check`]) reports the others.
pub fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// Is this ADD source fetched over the network rather than read from the context?
pub fn is_remote(src: &str) -> bool {
    let lower = src.to_ascii_lowercase();
    lower.starts_with("http://")
        || lower.starts_with("https://")
        || lower.starts_with("git@")
        || lower.starts_with("git://")
        || (lower.starts_with("ssh://") && lower.contains(".git"))
}

/// Splits a CSV record as Go's `encoding/csv` does for one line: commas separate fields,
/// a field starting with `"` is quoted and `""` inside it is a literal quote.
fn split_csv(s: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quote in mount options"),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    out.push(field);
                    return Ok(out);
                }
                Some(',') => {}
                Some(_) => return Err("extraneous character after a quoted field"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        out.push(field);
                        return Ok(out);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
        }
        out.push(field);
    }
}

/// Parses a byte size like Docker's `units.RAMInBytes`: `1024`, `64k`, `1.5m`, `2g`, `1gb`.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    if !(n >= 0.0 && n.is_finite()) {
        return None;
    }
    Some((n * mult as f64) as u64)
}

/// Parses a Go `time.ParseDuration` string: `300ms`, `1.5h`, `2h45m`, `-` not allowed here.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * nanos_per;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("s"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn csv_fields() {
        assert_eq!(split_csv("type=cache,target=/x").unwrap(), vec!["type=cache", "target=/x"]);
        assert_eq!(split_csv("\"a,b\",c").unwrap(), vec!["a,b", "c"]);
        assert_eq!(split_csv("\"a\"\"b\"").unwrap(), vec!["a\"b"]);
        assert!(split_csv("\"open").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("2mb"), Some(2 << 20));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn stage_names() {
        assert!(valid_stage_name("build-1.x_y"));
        assert!(!valid_stage_name("1build"));
        assert!(!valid_stage_name(""));
        assert!(!valid_stage_name("a b"));
    }
}
