//! The image a stage is building: its config, history and layer chain, and how each metadata
//! instruction changes them.
//!
//! A stage starts from its base's state ([`ImageState::scratch`], [`ImageState::from_image`]
//! or another stage's result) and every instruction edits it the way BuildKit's dispatcher
//! does: ENV replaces or appends `KEY=VALUE`, ENTRYPOINT clears an inherited CMD unless the
//! stage set CMD itself, shell-form commands are wrapped in the stage's SHELL, WORKDIR is
//! resolved against the previous one. History entries use BuildKit's `created_by` text
//! (`RUN /bin/sh -c echo hi # buildkit`, `ENV a=b`, `CMD ["x" "y"]`) so `docker history`
//! reads the same. HEALTHCHECK, SHELL and ONBUILD are kept where Docker and BuildKit keep them,
//! in the config's `Healthcheck`, `Shell` and `OnBuild` fields; a base image's `OnBuild`
//! triggers run in the child and are not passed on.

use serde_json::{json, Map, Value};
use strata_image::config::{format_created, ImageConfig, RunConfig};
use strata_recipe::instruction::{Command, Healthcheck};
use strata_store::oci_spec::image::Descriptor;
use strata_store::{Image, Store};
use strata_types::Digest;

use crate::error::{BuildError, Result};

/// The `PATH` BuildKit and buildah give a stage built from scratch, and RUN steps whose image
/// has none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The comment BuildKit's Dockerfile frontend writes in every history entry.
pub(crate) const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// One layer of the chain: its blob descriptor and its diffID, and for a base image's layer
/// the image's name (what a corrupt blob is reported against).
#[derive(Debug, Clone)]
pub(crate) struct LayerRef {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
    pub image: Option<std::sync::Arc<str>>,
}

/// The same layer, wherever it was found.
impl PartialEq for LayerRef {
    fn eq(&self, other: &LayerRef) -> bool {
        self.descriptor == other.descriptor && self.diff_id == other.diff_id
    }
}

impl LayerRef {
    pub fn digest(&self) -> Result<Digest> {
        Ok(Digest::try_from(self.descriptor.digest()).map_err(strata_store::StoreError::from)?)
    }
}

/// The mutable image of a stage.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImageState {
    /// The `config` object: what a container of the image runs, Docker's extensions included.
    pub run: RunConfig,
    pub author: Option<String>,
    pub history: Vec<Value>,
    pub layers: Vec<LayerRef>,
    /// ONBUILD triggers of the base image, to run right after FROM.
    pub base_onbuild: Vec<String>,
    /// Whether this stage set CMD (ENTRYPOINT keeps it then).
    pub cmd_set: bool,
    /// The platform the stage builds for (its `FROM --platform`, else the build's target);
    /// the host's when `None`. It goes into the config and every cache key.
    pub platform: Option<strata_types::Platform>,
    /// How many of `layers` and of `history` the stage's base gave it (what `--squash`
    /// keeps).
    pub base_layers: usize,
    pub base_history: usize,
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
}

impl ImageState {
    /// `FROM scratch`: empty, with the default `PATH` in `Env` (BuildKit and buildah both
    /// put it there).
    pub fn scratch() -> ImageState {
        ImageState {
            run: RunConfig { env: vec![format!("PATH={DEFAULT_PATH}")], ..RunConfig::default() },
            ..ImageState::default()
        }
    }

    /// The state of a stored image, read from its raw config blob (so fields the OCI types do
    /// not model, like Docker's `OnBuild`, are seen).
    /// `name` is how the user named the image (for error messages).
    pub fn from_image(store: &Store, image: &Image, name: &str) -> Result<ImageState> {
        let name: std::sync::Arc<str> = name.into();
        let config_digest = Digest::try_from(image.manifest.config().digest())
            .map_err(strata_store::StoreError::from)?;
        let raw: Value = serde_json::from_slice(&store.read_blob(&config_digest)?)
            .map_err(|source| BuildError::Config { source })?;
        let c = raw.get("config").cloned().unwrap_or(Value::Null);
        let diff_ids = strings(raw.get("rootfs").and_then(|r| r.get("diff_ids")))
            .unwrap_or_default()
            .iter()
            .map(|d| d.parse::<Digest>().map_err(strata_store::StoreError::from))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let layers = image
            .manifest
            .layers()
            .iter()
            .zip(diff_ids)
            .map(|(d, diff_id)| LayerRef {
                descriptor: d.clone(),
                diff_id,
                image: Some(name.clone()),
            })
            .collect();
        let mut run = RunConfig::from_json(&c);
        // Docker and BuildKit run a base's triggers in the child and do not pass them on.
        let base_onbuild = std::mem::take(&mut run.on_build);
        Ok(ImageState {
            run,
            author: raw.get("author").and_then(Value::as_str).map(str::to_string),
            history: raw.get("history").and_then(Value::as_array).cloned().unwrap_or_default(),
            layers,
            base_onbuild,
            cmd_set: false,
            platform: None,
            base_layers: 0,
            base_history: 0,
        })
    }

    /// The state a stage built `FROM` this one starts with.
    /// Its ONBUILD triggers run in that stage, as they would in a child image.
    pub fn for_child(&self) -> ImageState {
        let mut child = ImageState { cmd_set: false, ..self.clone() };
        child.base_onbuild = std::mem::take(&mut child.run.on_build);
        child
    }

    /// `Env` split into pairs, for variable expansion.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.run
            .env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self.run.env.iter_mut().find(|kv| kv.split('=').next() == Some(key)) {
            Some(kv) => *kv = entry,
            None => self.run.env.push(entry),
        }
    }

    pub fn get_env(&self, key: &str) -> Option<&str> {
        self.run.env.iter().find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }

    /// A shell-form command through the stage's SHELL.
    pub fn with_shell(&self, command: &str) -> Vec<String> {
        let mut v = self.run.shell.clone().unwrap_or_else(default_shell);
        v.push(command.to_string());
        v
    }

    pub fn push_history(&mut self, created_by: String, empty_layer: bool, timestamp: i64) {
        let mut h = Map::new();
        h.insert("created".into(), json!(format_created(timestamp)));
        h.insert("created_by".into(), json!(created_by));
        h.insert("comment".into(), json!(HISTORY_COMMENT));
        if empty_layer {
            h.insert("empty_layer".into(), json!(true));
        }
        self.history.push(Value::Object(h));
    }

    /// The image config of this state: the OCI config, with Docker's `Healthcheck`, `Shell`
    /// and `OnBuild` when the stage has them (see [`strata_image::config`]).
    pub fn to_config(&self, timestamp: i64) -> Result<ImageConfig> {
        let strata_types::Platform { os, architecture: arch, variant } =
            self.platform.clone().unwrap_or_else(strata_types::Platform::host);
        let diff_ids: Vec<String> = self.layers.iter().map(|l| l.diff_id.to_string()).collect();
        let mut root = Map::new();
        root.insert("created".into(), json!(format_created(timestamp)));
        if let Some(a) = &self.author {
            root.insert("author".into(), json!(a));
        }
        root.insert("architecture".into(), json!(arch));
        root.insert("os".into(), json!(os));
        if let Some(v) = variant {
            root.insert("variant".into(), json!(v));
        }
        root.insert("config".into(), self.run.to_json());
        root.insert("rootfs".into(), json!({"type": "layers", "diff_ids": diff_ids}));
        root.insert("history".into(), Value::Array(self.history.clone()));
        ImageConfig::from_json(Value::Object(root)).map_err(|source| BuildError::Config { source })
    }

    pub fn layer_descriptors(&self) -> Vec<Descriptor> {
        self.layers.iter().map(|l| l.descriptor.clone()).collect()
    }
}

/// `["/bin/sh", "-c"]`.
pub(crate) fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_string(), "-c".to_string()]
}

/// Go's `%q` of a `[]string`, as BuildKit prints CMD and ENTRYPOINT in history:
/// `["a" "b c"]`.
pub(crate) fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The config's `Healthcheck` for a HEALTHCHECK instruction, as Docker writes it: `NONE`
/// becomes `["NONE"]`, a shell-form command `["CMD-SHELL", command]` (run at container start
/// with the runtime's shell, not the build's SHELL), an exec form `["CMD", args...]`; an
/// option not given is 0, which means "the default" to the runtime.
pub(crate) fn healthcheck(h: &Healthcheck) -> strata_image::config::Healthcheck {
    let ns = |d: &Option<std::time::Duration>| d.map_or(0, |d| d.as_nanos() as u64);
    match h {
        Healthcheck::None => {
            strata_image::config::Healthcheck { test: vec!["NONE".into()], ..Default::default() }
        }
        Healthcheck::Cmd { command, interval, timeout, start_period, start_interval, retries } => {
            let test = match command {
                Command::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                Command::Exec(v) => std::iter::once("CMD".to_string()).chain(v.clone()).collect(),
            };
            strata_image::config::Healthcheck {
                test,
                interval: ns(interval),
                timeout: ns(timeout),
                start_period: ns(start_period),
                start_interval: ns(start_interval),
                retries: retries.unwrap_or(0),
            }
        }
    }
}

/// BuildKit's history text for HEALTHCHECK: Go's `%q` of the `HealthConfig` pointer,
/// `HEALTHCHECK &{["CMD-SHELL" "curl -f localhost"] "30s" "0s" "0s" "0s" '\x03'}` (the
/// durations print as Go durations, the retry count as a quoted rune).
pub(crate) fn healthcheck_history(h: &Healthcheck) -> String {
    let c = healthcheck(h);
    let d = |ns: u64| go_quote(&go_duration(ns));
    format!(
        "HEALTHCHECK &{{{} {} {} {} {} {}}}",
        go_quote_list(&c.test),
        d(c.interval),
        d(c.timeout),
        d(c.start_period),
        d(c.start_interval),
        go_quote_rune(c.retries)
    )
}

/// Go's `time.Duration.String`: `0s`, `1.5s`, `5m0s`, `1h0m0s`, `500ms`, `1.5µs`, `7ns`.
pub(crate) fn go_duration(ns: u64) -> String {
    fn frac(whole: u64, rest: u64, digits: usize) -> String {
        let f = format!("{rest:0digits$}");
        let f = f.trim_end_matches('0');
        if f.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{f}")
        }
    }
    match ns {
        0 => "0s".into(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}µs", frac(n / 1_000, n % 1_000, 3)),
        n if n < 1_000_000_000 => format!("{}ms", frac(n / 1_000_000, n % 1_000_000, 6)),
        n => {
            let secs = frac((n / 1_000_000_000) % 60, n % 1_000_000_000, 9);
            let mins = n / 60_000_000_000;
            match (mins / 60, mins % 60) {
                (0, 0) => format!("{secs}s"),
                (0, m) => format!("{m}m{secs}s"),
                (h, m) => format!("{h}h{m}m{secs}s"),
            }
        }
    }
}

/// Go's `%q` of an integer: the quoted rune (`'\x00'`, `'A'`).
fn go_quote_rune(n: u32) -> String {
    match char::from_u32(n) {
        Some('\'') => "'\\''".into(),
        Some('\\') => "'\\\\'".into(),
        Some('\n') => "'\\n'".into(),
        Some('\t') => "'\\t'".into(),
        Some('\r') => "'\\r'".into(),
        Some(c) if (' '..='~').contains(&c) => format!("'{c}'"),
        Some(c) if (c as u32) < 0x80 => format!("'\\x{:02x}'", c as u32),
        Some(c) if !c.is_control() => format!("'{c}'"),
        _ if n <= 0xffff => format!("'\\u{n:04x}'"),
        _ => format!("'\\U{n:08x}'"),
    }
}

/// Normalizes `EXPOSE` words the way Docker's `nat.ParsePortSpecs` does: `80` -> `80/tcp`,
/// protocols lower-cased, ranges `8000-8002` expanded.
pub(crate) fn expose_ports(words: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for w in words {
        let (ports, proto) = match w.split_once('/') {
            Some((p, proto)) => (p, proto.to_ascii_lowercase()),
            None => (w.as_str(), "tcp".to_string()),
        };
        let range = ports
            .split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
        match range {
            Some((a, b)) if a <= b && b - a < 65536 => {
                out.extend((a..=b).map(|p| format!("{p}/{proto}")));
            }
            _ => out.push(format!("{ports}/{proto}")),
        }
    }
    out
}

/// Resolves a WORKDIR against the current one and cleans it (`/a/./b/../c` -> `/a/c`).
pub(crate) fn join_workdir(current: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", if current.is_empty() { "/" } else { current }, path)
    };
    clean_abs(&joined)
}

/// `path.Clean` for an absolute path.
pub(crate) fn clean_abs(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_quoting_matches_docker_history() {
        let v = vec!["/bin/sh".to_string(), "-c".into(), "echo \"hi\"".into()];
        assert_eq!(go_quote_list(&v), r#"["/bin/sh" "-c" "echo \"hi\""]"#);
    }

    #[test]
    fn healthcheck_history_reads_like_buildkit() {
        let h = Healthcheck::Cmd {
            command: Command::Shell("curl -f localhost".into()),
            interval: Some(std::time::Duration::from_secs(300)),
            timeout: Some(std::time::Duration::from_secs(3)),
            start_period: None,
            start_interval: None,
            retries: Some(3),
        };
        assert_eq!(
            healthcheck_history(&h),
            r#"HEALTHCHECK &{["CMD-SHELL" "curl -f localhost"] "5m0s" "3s" "0s" "0s" '\x03'}"#
        );
        let c = healthcheck(&h);
        assert_eq!((c.interval, c.retries), (300_000_000_000, 3));
        assert_eq!(healthcheck(&Healthcheck::None).test, ["NONE"]);
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_quote_rune(65), "'A'");
    }

    #[test]
    fn ports_normalize_like_docker() {
        let w = vec!["80".to_string(), "53/UDP".into(), "8000-8002".into()];
        assert_eq!(expose_ports(&w), ["80/tcp", "53/udp", "8000/tcp", "8001/tcp", "8002/tcp"]);
    }

    #[test]
    fn workdir_joins_and_cleans() {
        assert_eq!(join_workdir("", "app"), "/app");
        assert_eq!(join_workdir("/a", "b/../c/"), "/a/c");
        assert_eq!(join_workdir("/a", "/x/./y"), "/x/y");
    }

    #[test]
    fn env_replaces_in_place() {
        let mut s = ImageState::default();
        s.set_env("A", "1");
        s.set_env("AB", "2");
        s.set_env("A", "3");
        assert_eq!(s.run.env, ["A=3", "AB=2"]);
        assert_eq!(s.get_env("AB"), Some("2"));
    }
}
