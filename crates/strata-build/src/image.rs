//! The image a stage is building: its config, history and layer chain, and how each metadata
//! instruction changes them.
//!
//! A stage starts from its base's state ([`ImageState::scratch`], [`ImageState::from_image`]
//! or another stage's result) and every instruction edits it the way BuildKit's dispatcher
//! does: ENV replaces or appends `KEY=VALUE`, ENTRYPOINT clears an inherited CMD unless the
//! stage set CMD itself, shell-form commands are wrapped in the stage's SHELL, WORKDIR is
//! resolved against the previous one. History entries use BuildKit's `created_by` text
//! (`RUN /bin/sh -c echo hi # buildkit`, `ENV a=b`, `CMD ["x" "y"]`) so `docker history`
//! reads the same. The OCI config has no place for HEALTHCHECK, SHELL or ONBUILD (buildah
//! drops them from OCI images with a warning too); a base image's `OnBuild` triggers are read
//! from its raw config blob so they can still run.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use strata_image::config::format_created;
use strata_store::oci_spec::image::{Descriptor, ImageConfiguration};
use strata_store::{Image, Store};
use strata_types::Digest;

use crate::error::{BuildError, Result};

/// The `PATH` BuildKit and buildah give a stage built from scratch, and RUN steps whose image
/// has none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The comment BuildKit's Dockerfile frontend writes in every history entry.
pub(crate) const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// One layer of the chain: its blob descriptor and its diffID.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LayerRef {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
}

impl LayerRef {
    pub fn digest(&self) -> Result<Digest> {
        Ok(Digest::try_from(self.descriptor.digest()).map_err(strata_store::StoreError::from)?)
    }
}

/// The mutable image of a stage.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImageState {
    pub env: Vec<String>,
    pub user: String,
    pub exposed_ports: BTreeSet<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub volumes: BTreeSet<String>,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub author: Option<String>,
    pub history: Vec<Value>,
    pub layers: Vec<LayerRef>,
    pub shell: Vec<String>,
    /// ONBUILD triggers of the base image, to run right after FROM.
    pub base_onbuild: Vec<String>,
    /// Whether this stage set CMD (ENTRYPOINT keeps it then).
    pub cmd_set: bool,
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
}

fn keys(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

impl ImageState {
    /// `FROM scratch`: empty, with the default `PATH` in `Env` (BuildKit and buildah both
    /// put it there).
    pub fn scratch() -> ImageState {
        ImageState {
            shell: default_shell(),
            env: vec![format!("PATH={DEFAULT_PATH}")],
            ..ImageState::default()
        }
    }

    /// The state of a stored image, read from its raw config blob (so fields the OCI types do
    /// not model, like Docker's `OnBuild`, are seen).
    pub fn from_image(store: &Store, image: &Image) -> Result<ImageState> {
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
            .map(|(d, diff_id)| LayerRef { descriptor: d.clone(), diff_id })
            .collect();
        Ok(ImageState {
            env: strings(c.get("Env")).unwrap_or_default(),
            user: c.get("User").and_then(Value::as_str).unwrap_or_default().to_string(),
            exposed_ports: keys(c.get("ExposedPorts")),
            entrypoint: strings(c.get("Entrypoint")),
            cmd: strings(c.get("Cmd")),
            volumes: keys(c.get("Volumes")),
            working_dir: c.get("WorkingDir").and_then(Value::as_str).unwrap_or_default().into(),
            labels: c
                .get("Labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            stop_signal: c.get("StopSignal").and_then(Value::as_str).map(str::to_string),
            author: raw.get("author").and_then(Value::as_str).map(str::to_string),
            history: raw.get("history").and_then(Value::as_array).cloned().unwrap_or_default(),
            layers,
            shell: strings(c.get("Shell")).filter(|s| !s.is_empty()).unwrap_or_else(default_shell),
            base_onbuild: strings(c.get("OnBuild")).unwrap_or_default(),
            cmd_set: false,
        })
    }

    /// The state a stage built `FROM` this one starts with.
    pub fn for_child(&self) -> ImageState {
        ImageState { cmd_set: false, base_onbuild: Vec::new(), ..self.clone() }
    }

    /// `Env` split into pairs, for variable expansion.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self.env.iter_mut().find(|kv| kv.split('=').next() == Some(key)) {
            Some(kv) => *kv = entry,
            None => self.env.push(entry),
        }
    }

    pub fn get_env(&self, key: &str) -> Option<&str> {
        self.env.iter().find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }

    /// A shell-form command through the stage's SHELL.
    pub fn with_shell(&self, command: &str) -> Vec<String> {
        let mut v = self.shell.clone();
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

    /// The OCI image config of this state.
    pub fn to_config(&self, timestamp: i64) -> Result<ImageConfiguration> {
        let strata_types::Platform { os, architecture: arch, .. } = strata_types::Platform::host();
        let mut c = Map::new();
        if !self.user.is_empty() {
            c.insert("User".into(), json!(self.user));
        }
        if !self.exposed_ports.is_empty() {
            let m: Map<String, Value> =
                self.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect();
            c.insert("ExposedPorts".into(), Value::Object(m));
        }
        if !self.env.is_empty() {
            c.insert("Env".into(), json!(self.env));
        }
        if let Some(e) = &self.entrypoint {
            c.insert("Entrypoint".into(), json!(e));
        }
        if let Some(cmd) = &self.cmd {
            c.insert("Cmd".into(), json!(cmd));
        }
        if !self.volumes.is_empty() {
            let m: Map<String, Value> =
                self.volumes.iter().map(|p| (p.clone(), json!({}))).collect();
            c.insert("Volumes".into(), Value::Object(m));
        }
        if !self.working_dir.is_empty() {
            c.insert("WorkingDir".into(), json!(self.working_dir));
        }
        if !self.labels.is_empty() {
            c.insert("Labels".into(), json!(self.labels));
        }
        if let Some(s) = &self.stop_signal {
            c.insert("StopSignal".into(), json!(s));
        }
        let diff_ids: Vec<String> = self.layers.iter().map(|l| l.diff_id.to_string()).collect();
        let mut root = Map::new();
        root.insert("created".into(), json!(format_created(timestamp)));
        if let Some(a) = &self.author {
            root.insert("author".into(), json!(a));
        }
        root.insert("architecture".into(), json!(arch));
        root.insert("os".into(), json!(os));
        root.insert("config".into(), Value::Object(c));
        root.insert("rootfs".into(), json!({"type": "layers", "diff_ids": diff_ids}));
        root.insert("history".into(), Value::Array(self.history.clone()));
        serde_json::from_value(Value::Object(root)).map_err(|source| BuildError::Config { source })
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
        assert_eq!(s.env, ["A=3", "AB=2"]);
        assert_eq!(s.get_env("AB"), Some("2"));
    }
}
