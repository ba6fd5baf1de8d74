//! Config fields, compared on the config JSON as stored (so Docker's extensions such as
//! `Healthcheck` and `Shell` are seen even though the OCI types lack them).

use std::collections::BTreeMap;

use serde_json::Value;
use strata_store::{Image, Store, StoreError};
use strata_types::Digest;

use crate::error::DiffError;
use crate::report::ConfigChange;

/// Fields of `config` compared as whole values (Env and Labels are compared per key).
const WHOLE: [&str; 9] = [
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "Healthcheck",
    "Shell",
];

/// The raw config JSON of an image, verified against its digest.
pub(crate) fn raw_config(store: &Store, image: &Image) -> Result<Value, DiffError> {
    let digest = Digest::try_from(image.manifest.config().digest()).map_err(StoreError::from)?;
    let bytes = store.read_blob(&digest)?;
    serde_json::from_slice(&bytes).map_err(|source| {
        DiffError::Store(StoreError::InvalidBlobJson { digest, what: "image config", source })
    })
}

fn null_if_empty(v: &Value) -> Value {
    match v {
        Value::Array(a) if a.is_empty() => Value::Null,
        Value::Object(o) if o.is_empty() => Value::Null,
        Value::String(s) if s.is_empty() => Value::Null,
        other => other.clone(),
    }
}

fn env_map(v: &Value) -> BTreeMap<String, Value> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), Value::String(v.to_owned())),
            None => (kv.to_owned(), Value::Null),
        })
        .collect()
}

fn platform(c: &Value) -> Value {
    let mut s =
        format!("{}/{}", c["os"].as_str().unwrap_or(""), c["architecture"].as_str().unwrap_or(""));
    if let Some(v) = c["variant"].as_str().filter(|v| !v.is_empty()) {
        s.push('/');
        s.push_str(v);
    }
    if let Some(v) = c["os.version"].as_str().filter(|v| !v.is_empty()) {
        s.push_str(&format!(" ({v})"));
    }
    Value::String(s)
}

/// Config changes from A to B, in a fixed field order.
pub(crate) fn compare(a: &Value, b: &Value, semantic: bool) -> Vec<ConfigChange> {
    let mut out = Vec::new();
    let mut push = |field: String, x: Value, y: Value| {
        if x != y {
            out.push(ConfigChange { field, a: x, b: y });
        }
    };
    let (ca, cb) = (&a["config"], &b["config"]);
    let (ea, eb) = (env_map(&ca["Env"]), env_map(&cb["Env"]));
    for k in ea.keys().chain(eb.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (x, y) = (ea.get(k).cloned(), eb.get(k).cloned());
        if x != y {
            push(format!("Env[{k}]"), x.unwrap_or(Value::Null), y.unwrap_or(Value::Null));
        }
    }
    for f in WHOLE {
        push(f.to_owned(), null_if_empty(&ca[f]), null_if_empty(&cb[f]));
    }
    let empty = serde_json::Map::new();
    let la = ca["Labels"].as_object().unwrap_or(&empty);
    let lb = cb["Labels"].as_object().unwrap_or(&empty);
    for k in la.keys().chain(lb.keys()).collect::<std::collections::BTreeSet<_>>() {
        let x = la.get(k).cloned().unwrap_or(Value::Null);
        let y = lb.get(k).cloned().unwrap_or(Value::Null);
        push(format!("Labels[{k}]"), x, y);
    }
    push("OnBuild".into(), null_if_empty(&ca["OnBuild"]), null_if_empty(&cb["OnBuild"]));
    push("author".into(), null_if_empty(&a["author"]), null_if_empty(&b["author"]));
    push("platform".into(), platform(a), platform(b));
    if !semantic {
        push("created".into(), a["created"].clone(), b["created"].clone());
    }
    out
}

/// `created_by` of each layer: history entries with `empty_layer` skipped, in order.
pub(crate) fn layer_history(image: &Image) -> Vec<Option<String>> {
    image
        .config
        .history()
        .iter()
        .flatten()
        .filter(|h| !h.empty_layer().unwrap_or(false))
        .map(|h| h.created_by().clone())
        .collect()
}
