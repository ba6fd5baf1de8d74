//! Progress events: what a build tells its caller while it runs.
//!
//! A build pushes typed [`BuildEvent`]s into a [`ProgressSink`] as it goes (stage started,
//! step started, a line of RUN output, step finished with its layer, warnings, done). The
//! library never prints (DESIGN.md decision 10): the CLI renders events as a terminal display,
//! a CI log or JSON lines (every event serializes with `serde`). Sinks are called from the
//! build's threads, so they must be `Send + Sync`; a closure `Fn(&BuildEvent)` is a sink.
//!
//! The JSON shape is a contract for tools (`strata build --progress json`): one
//! [`EventRecord`] per line, an object with `"version"` ([`EVENT_VERSION`]), `"event"` (the
//! variant in snake_case) and the variant's fields. Within a version, fields and events are
//! only ever added; a field renamed or removed, or a meaning changed, bumps the version.

use serde::Serialize;

/// The version of the JSON event shape ([`EventRecord::version`]).
pub const EVENT_VERSION: u32 = 1;

/// A [`BuildEvent`] as written for tools: `{"version":1,"event":"step_done",...}`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EventRecord<'a> {
    /// [`EVENT_VERSION`].
    pub version: u32,
    /// The event; its `event` tag and fields sit beside `version`.
    #[serde(flatten)]
    pub event: &'a BuildEvent,
}

impl<'a> EventRecord<'a> {
    /// The record of `event` in the current version.
    pub fn new(event: &'a BuildEvent) -> EventRecord<'a> {
        EventRecord { version: EVENT_VERSION, event }
    }
}

/// The wall time of one phase of a step ([`BuildEvent::StepPhases`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepPhase {
    /// What the step was doing.
    pub name: &'static str,
    /// For how long, in microseconds (summed when the phase ran more than once).
    pub micros: u64,
}

/// Which output stream a line of RUN output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One thing that happened during a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum BuildEvent {
    /// The recipe is planned and checked; steps are about to run (the first event after any
    /// [`BuildEvent::CheckWarning`]s).
    BuildStart {
        /// Stages the target needs.
        stages: usize,
        /// Steps of those stages, FROM lines not counted. A base's ONBUILD triggers are not
        /// known yet; they add [`BuildEvent::StageStart::onbuild_steps`] when their stage starts.
        steps: usize,
    },
    /// A stage starts building.
    StageStart {
        /// Stage index in the recipe.
        stage: usize,
        /// `AS name`, if any.
        name: Option<String>,
        /// What it builds on: `scratch`, an image reference, or `stage N`.
        base: String,
        /// Steps this stage runs, its base's ONBUILD triggers included.
        steps: usize,
        /// Of those, the base's ONBUILD triggers (run first, not in [`BuildEvent::BuildStart`]).
        onbuild_steps: usize,
        /// The platform it builds for, in a build that names one (`--platform`, `FROM
        /// --platform`). In a build for several platforms, stage numbers count on across
        /// platforms: the second platform's stage 0 is stage N, where N is the recipe's
        /// number of stages.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        platform: Option<String>,
    },
    /// A step starts.
    StepStart {
        /// Stage index.
        stage: usize,
        /// Step index within the stage (0-based; ONBUILD triggers come first).
        step: usize,
        /// Recipe line.
        line: usize,
        /// The instruction as written.
        text: String,
    },
    /// A step's inputs are unchanged since an earlier build: its layer and history entry are
    /// reused and nothing runs or is copied (a [`BuildEvent::StepDone`] follows).
    StepCached {
        /// Stage index.
        stage: usize,
        /// Step index.
        step: usize,
    },
    /// A cacheable step's result is not in the cache, so it runs: why, against the result
    /// the same step (context, recipe, platform, stage, step) made last time, e.g. "source
    /// files changed: app/index.php" or "an earlier step changed (the layers below differ)".
    CacheMiss {
        /// Stage index.
        stage: usize,
        /// Step index.
        step: usize,
        /// One line saying which inputs changed.
        reason: String,
    },
    /// A COPY or ADD from the build context has looked at its sources (to compute its cache
    /// key): what of the context it reads, after `.dockerignore` and `--exclude`.
    ContextScanned {
        /// Stage index.
        stage: usize,
        /// Step index.
        step: usize,
        /// Regular files matched.
        files: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// A COPY or ADD (not cached) has staged its files for the layer.
    CopyStaged {
        /// Stage index.
        stage: usize,
        /// Step index.
        step: usize,
        /// Regular files staged.
        files: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// A line printed by a RUN command.
    StepOutput {
        /// Stage index.
        stage: usize,
        /// Step index.
        step: usize,
        /// Which stream.
        stream: OutputStream,
        /// The line, without its newline.
        line: String,
    },
    /// A step finished.
    StepDone {
        /// Stage index.
        stage: usize,
        /// Step index.
        step: usize,
        /// Wall time in milliseconds.
        duration_ms: u64,
        /// The layer blob digest, for steps that changed the filesystem.
        layer: Option<String>,
        /// The layer blob size in bytes.
        layer_size: Option<u64>,
        /// True for metadata-only steps (no layer).
        empty_layer: bool,
    },
    /// Where a step that ran (not cached) spent its wall time, phase by phase, in order
    /// (sent just before its [`BuildEvent::StepDone`]): for a COPY e.g. `context
    /// scan+hash`, `parent view`, `copy to staging`, `scan staging`, `layer write`, `snapshot`;
    /// for a RUN `parent view`, `mounts`, `run`, `changes`, `layer write`, `snapshot` (the
    /// overlay upper made the snapshot), and `snapshot unpack` where the upper could not be
    /// and the blob was unpacked instead. A `layer write` is followed by its stages `layer
    /// write: tar`, `layer write: compress` and `layer write: store write`, each the time it
    /// was busy: they run pipelined on two threads, so they overlap and are part of `layer
    /// write`, not further phases.
    StepPhases {
        /// Stage index.
        stage: usize,
        /// Step index.
        step: usize,
        /// The phases, in the order they first ran.
        phases: Vec<StepPhase>,
    },
    /// A registry base is being pulled (`--pull=missing` found it absent, or `--pull=always`).
    PullStart {
        /// The reference, `host/repo:tag`.
        reference: String,
    },
    /// A blob of the base being pulled starts downloading (the store lacks it).
    PullBlobStart {
        /// The reference being pulled.
        reference: String,
        /// The blob's digest.
        digest: String,
        /// What the blob is.
        kind: PullBlobKind,
        /// Its size in bytes.
        size: u64,
    },
    /// Bytes of that blob downloaded so far (about one event per MiB).
    PullBlobProgress {
        /// The reference being pulled.
        reference: String,
        /// The blob's digest.
        digest: String,
        /// Bytes downloaded so far.
        done: u64,
        /// The blob's size ([`BuildEvent::PullBlobStart::size`]).
        size: u64,
    },
    /// A blob of the base is in the store: downloaded, or already there (then without a
    /// [`BuildEvent::PullBlobStart`] before it).
    PullBlobDone {
        /// The reference being pulled.
        reference: String,
        /// The blob's digest.
        digest: String,
        /// How it got there.
        outcome: PullBlobOutcome,
    },
    /// The pull finished; the image is in the store, tagged with its reference.
    PullDone {
        /// The reference, `host/repo:tag`.
        reference: String,
        /// The manifest digest.
        digest: String,
        /// Blobs (layers and config) downloaded.
        blobs_downloaded: usize,
        /// Blobs the store already had.
        blobs_present: usize,
        /// Bytes downloaded.
        bytes: u64,
    },
    /// A build check found something in the recipe (reported before any step runs, as
    /// BuildKit reports its lint warnings; see [`crate::check`]).
    CheckWarning {
        /// The rule's name (`JSONArgsRecommended`, ...).
        rule: String,
        /// What is wrong, in the rule's words.
        message: String,
        /// Recipe line.
        line: usize,
        /// The rule's documentation page, for BuildKit's rules.
        url: Option<String>,
    },
    /// Something the user should know that does not stop the build.
    Warning {
        /// The message, one sentence.
        message: String,
    },
    /// The image is written (and tagged).
    BuildDone {
        /// The manifest digest.
        digest: String,
        /// Layers reused from the cache.
        layers_reused: usize,
        /// Layers written by this build.
        layers_written: usize,
        /// Compressed bytes of the layers written.
        bytes_written: u64,
    },
}

/// What a blob of a pulled base is ([`BuildEvent::PullBlobStart`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PullBlobKind {
    /// A layer.
    Layer,
    /// The image config.
    Config,
    /// A manifest or index.
    Manifest,
}

/// How a blob of a pulled base reached the store ([`BuildEvent::PullBlobDone`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PullBlobOutcome {
    /// Downloaded from the registry.
    Downloaded,
    /// The store had it; nothing moved.
    Present,
}

/// Receives [`BuildEvent`]s.
pub trait ProgressSink: Send + Sync {
    /// Called once per event, in order for each stage.
    fn event(&self, e: &BuildEvent);
}

impl<F: Fn(&BuildEvent) + Send + Sync> ProgressSink for F {
    fn event(&self, e: &BuildEvent) {
        self(e)
    }
}

/// A sink that drops every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _e: &BuildEvent) {}
}

/// A sink that numbers stages on from `offset` (one platform's builder in a build for
/// several; see [`BuildEvent::StageStart::platform`]).
pub(crate) struct StageOffset<'a> {
    pub inner: &'a dyn ProgressSink,
    pub offset: usize,
}

impl ProgressSink for StageOffset<'_> {
    fn event(&self, event: &BuildEvent) {
        if self.offset == 0 {
            return self.inner.event(event);
        }
        let mut e = event.clone();
        match &mut e {
            BuildEvent::StageStart { stage, .. }
            | BuildEvent::StepStart { stage, .. }
            | BuildEvent::StepCached { stage, .. }
            | BuildEvent::ContextScanned { stage, .. }
            | BuildEvent::CopyStaged { stage, .. }
            | BuildEvent::StepOutput { stage, .. }
            | BuildEvent::CacheMiss { stage, .. }
            | BuildEvent::StepPhases { stage, .. }
            | BuildEvent::StepDone { stage, .. } => *stage += self.offset,
            _ => {}
        }
        self.inner.event(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_tagged_json() {
        let e = BuildEvent::StepDone {
            stage: 1,
            step: 2,
            duration_ms: 3,
            layer: Some("sha256:ab".into()),
            layer_size: Some(9),
            empty_layer: false,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "step_done");
        assert_eq!(v["layer_size"], 9);
        let o = BuildEvent::StepOutput {
            stage: 0,
            step: 0,
            stream: OutputStream::Stderr,
            line: "x".into(),
        };
        assert_eq!(serde_json::to_value(&o).unwrap()["stream"], "stderr");
    }
}
