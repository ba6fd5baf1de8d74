//! Image configs: the model of the runtime part strata reads and writes, the RFC 3339 times
//! they carry, and the config of an imported tree.
//!
//! The OCI config (image-spec `config.md`) has no place for three things Dockerfiles say:
//! `HEALTHCHECK`, `SHELL` and `ONBUILD`. Docker and BuildKit write them anyway, as the fields
//! `Healthcheck`, `Shell` and `OnBuild` of the `config` object, for OCI media types too
//! (moby/docker-image-spec `DockerOCIImageConfigExt`), and `docker run`/`docker inspect`
//! honour them. [`RunConfig`] models the `config` object with those fields, read from a
//! config's raw JSON (the OCI types of oci-spec drop what they do not know) and written back
//! as JSON in a fixed form, so the same values always give the same bytes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use strata_store::oci_spec::image::{
    ConfigBuilder, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder, RootFsBuilder,
};
use strata_store::StoreError;
use strata_types::Digest;

use crate::error::{ImageError, Result};

/// Formats seconds since the epoch as the RFC 3339 UTC time OCI configs use.
pub fn format_created(epoch: i64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), so no date crate is needed for one format.
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, (secs % 3600) / 60, secs % 60)
}

pub(crate) fn build_err(what: &'static str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Store(StoreError::Serialize { what, source: serde::ser::Error::custom(e) })
}

/// A one-layer image config for `diff_id`, as `docker import` makes it.
pub(crate) fn import_config(
    diff_id: &Digest,
    epoch: i64,
    created_by: &str,
) -> Result<ImageConfiguration> {
    let strata_types::Platform { os, architecture: arch, .. } = strata_types::Platform::host();
    let created = format_created(epoch);
    let history = HistoryBuilder::default()
        .created(created.clone())
        .created_by(created_by.to_string())
        .comment("imported by strata".to_string())
        .build()
        .map_err(|e| build_err("image history", e))?;
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(vec![diff_id.to_string()])
        .build()
        .map_err(|e| build_err("image rootfs", e))?;
    let config = ConfigBuilder::default()
        .env(vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()])
        .build()
        .map_err(|e| build_err("image config", e))?;
    ImageConfigurationBuilder::default()
        .created(created)
        .architecture(arch.as_str())
        .os(os.as_str())
        .config(config)
        .rootfs(rootfs)
        .history(vec![history])
        .build()
        .map_err(|e| build_err("image configuration", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(format_created(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_created(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_created(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}

/// Docker's `Healthcheck` (`HealthcheckConfig`): how to probe a container of the image.
/// Durations are nanoseconds, 0 meaning "the default"; `Test` is `["NONE"]` (disabled),
/// `["CMD", args...]` or `["CMD-SHELL", command]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// The probe.
    #[serde(rename = "Test", default, skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// Time between probes.
    #[serde(rename = "Interval", default, skip_serializing_if = "is_zero")]
    pub interval: u64,
    /// Time a probe may take.
    #[serde(rename = "Timeout", default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    /// Time to start up before failures count.
    #[serde(rename = "StartPeriod", default, skip_serializing_if = "is_zero")]
    pub start_period: u64,
    /// Time between probes during the start period.
    #[serde(rename = "StartInterval", default, skip_serializing_if = "is_zero")]
    pub start_interval: u64,
    /// Consecutive failures before the container is unhealthy.
    #[serde(rename = "Retries", default, skip_serializing_if = "is_zero_u32")]
    pub retries: u32,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// The `config` object of an image config: how a container of the image runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunConfig {
    /// `User`.
    pub user: String,
    /// `ExposedPorts` keys (`80/tcp`).
    pub exposed_ports: BTreeSet<String>,
    /// `Env`, `KEY=VALUE` in order.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `Volumes` keys.
    pub volumes: BTreeSet<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal`.
    pub stop_signal: Option<String>,
    /// Docker's `Healthcheck`.
    pub healthcheck: Option<Healthcheck>,
    /// Docker's `Shell`: the shell of shell-form commands, when not `["/bin/sh", "-c"]`'s
    /// default was left alone.
    pub shell: Option<Vec<String>>,
    /// Docker's `OnBuild`: instructions a child build runs right after its FROM.
    pub on_build: Vec<String>,
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
}

fn keys(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

impl RunConfig {
    /// Reads the `config` object of a config's raw JSON, leniently: a field of another type
    /// than expected is absent, as Docker reads it.
    pub fn from_json(config: &Value) -> RunConfig {
        let c = config;
        let string = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
        RunConfig {
            user: string("User").unwrap_or_default(),
            exposed_ports: keys(c.get("ExposedPorts")),
            env: strings(c.get("Env")).unwrap_or_default(),
            entrypoint: strings(c.get("Entrypoint")),
            cmd: strings(c.get("Cmd")),
            volumes: keys(c.get("Volumes")),
            working_dir: string("WorkingDir").unwrap_or_default(),
            labels: c
                .get("Labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            stop_signal: string("StopSignal"),
            healthcheck: c
                .get("Healthcheck")
                .and_then(|h| serde_json::from_value(h.clone()).ok())
                .filter(|h: &Healthcheck| !h.test.is_empty()),
            shell: strings(c.get("Shell")).filter(|s| !s.is_empty()),
            on_build: strings(c.get("OnBuild")).unwrap_or_default(),
        }
    }

    /// The `config` object, with only the fields that are set.
    pub fn to_json(&self) -> Value {
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
        if let Some(h) = &self.healthcheck {
            c.insert("Healthcheck".into(), json!(h));
        }
        if let Some(s) = &self.shell {
            c.insert("Shell".into(), json!(s));
        }
        if !self.on_build.is_empty() {
            c.insert("OnBuild".into(), json!(self.on_build));
        }
        Value::Object(c)
    }
}

/// The fields of the `config` object that Docker writes and the OCI types do not model.
const DOCKER_EXTENSIONS: [&str; 3] = ["Healthcheck", "Shell", "OnBuild"];

/// An image config as strata writes it: validated by the OCI types, and kept as JSON with
/// Docker's `Healthcheck`, `Shell` and `OnBuild`, which those types would drop.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    oci: ImageConfiguration,
    json: Value,
}

impl ImageConfig {
    /// Reads a config from JSON. It must be a valid OCI config; of the rest of the `config`
    /// object only Docker's extension fields are kept. A config without them has the bytes it
    /// had when strata knew only the OCI fields, so its digest does not change.
    pub fn from_json(value: Value) -> Result<ImageConfig, serde_json::Error> {
        let oci: ImageConfiguration = serde_json::from_value(value.clone())?;
        let mut json = serde_json::to_value(&oci)?;
        let extensions: Vec<(&str, Value)> = DOCKER_EXTENSIONS
            .iter()
            .filter_map(|k| Some((*k, value.get("config")?.get(*k)?.clone())))
            .filter(|(_, v)| !v.is_null())
            .collect();
        if !extensions.is_empty() {
            if !json.get("config").is_some_and(Value::is_object) {
                json["config"] = json!({});
            }
            for (k, v) in extensions {
                json["config"][k] = v;
            }
        }
        Ok(ImageConfig { oci, json })
    }

    /// The OCI view (Docker's extensions are not in it).
    pub fn oci(&self) -> &ImageConfiguration {
        &self.oci
    }

    /// The whole config, as it is stored.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// Stores the config and a manifest over `layers`; the manifest's descriptor.
    pub fn put(
        &self,
        store: &strata_store::Store,
        layers: &[strata_store::oci_spec::image::Descriptor],
    ) -> Result<strata_store::oci_spec::image::Descriptor, strata_store::StoreError> {
        self.put_with_remote_layers(store, layers, &Default::default())
    }

    /// [`ImageConfig::put`] where the layers `remote` (blob digests) are not in the store
    /// (see strata-store's `put_image_with_remote_layers`).
    pub fn put_with_remote_layers(
        &self,
        store: &strata_store::Store,
        layers: &[strata_store::oci_spec::image::Descriptor],
        remote: &std::collections::BTreeSet<strata_types::Digest>,
    ) -> Result<strata_store::oci_spec::image::Descriptor, strata_store::StoreError> {
        let put = store.put_json(&self.json)?;
        store.put_image_with_remote_layers(&put.digest, put.size, layers, remote)
    }
}

#[cfg(test)]
mod run_config_tests {
    use super::*;

    #[test]
    fn docker_extensions_round_trip_and_unknown_types_are_absent() {
        let c = json!({
            "User": "app", "Env": ["A=1"], "Cmd": ["x"], "ExposedPorts": {"80/tcp": {}},
            "Healthcheck": {"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 30000000000u64, "Retries": 3},
            "Shell": ["/bin/bash", "-c"], "OnBuild": ["RUN echo hi"], "StopSignal": 15
        });
        let r = RunConfig::from_json(&c);
        assert_eq!(r.healthcheck.as_ref().unwrap().retries, 3);
        assert_eq!(r.shell.as_deref(), Some(&["/bin/bash".to_string(), "-c".into()][..]));
        assert_eq!(r.on_build, ["RUN echo hi"]);
        assert_eq!(r.stop_signal, None, "a number is not a signal name");
        let back = r.to_json();
        assert_eq!(back["Healthcheck"], c["Healthcheck"]);
        assert_eq!(RunConfig::from_json(&back), r);
        assert_eq!(RunConfig::default().to_json(), json!({}));
    }

    fn base_config() -> Value {
        json!({
            "created": "2023-11-14T22:13:20Z", "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [{"created_by": "x", "empty_layer": true}]
        })
    }

    #[test]
    fn a_config_without_extensions_has_the_bytes_of_the_oci_type() {
        let v = base_config();
        let oci: ImageConfiguration = serde_json::from_value(v.clone()).unwrap();
        let c = ImageConfig::from_json(v).unwrap();
        assert_eq!(
            strata_store::canonical_json(c.json()).unwrap(),
            strata_store::canonical_json(&oci).unwrap()
        );
    }

    #[test]
    fn extensions_survive_and_strangers_do_not() {
        let mut v = base_config();
        v["config"]["Shell"] = json!(["/bin/bash", "-c"]);
        v["config"]["OnBuild"] = json!(["RUN true"]);
        v["config"]["Made-up"] = json!(1);
        let c = ImageConfig::from_json(v).unwrap();
        assert_eq!(c.json()["config"]["Shell"], json!(["/bin/bash", "-c"]));
        assert_eq!(c.json()["config"]["OnBuild"], json!(["RUN true"]));
        assert!(c.json()["config"].get("Made-up").is_none());
        assert_eq!(c.json()["config"]["Cmd"], json!(["sh"]));
        assert!(ImageConfig::from_json(json!({"rootfs": 3})).is_err());
    }
}
