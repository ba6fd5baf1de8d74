//! How `strata build` shows a build: `plain` (BuildKit's `--progress=plain` log), `tty` (a
//! live view redrawn in place, as BuildKit's) or `json` (one versioned event per line).
//!
//! The library only emits [`BuildEvent`]s; this module turns them into text. The tty view
//! keeps a header (`[+] Building 6.1s (4/9)`) and one line per step started so far,
//! redrawn ten times a second and on every event, each line cut to the terminal's width so
//! nothing wraps (a wrapped line would break the cursor arithmetic of the redraw). RUN output
//! scrolls above the live view. At the end the live view gives way to one summary line per
//! stage; plain mode prints the full step report instead.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata::build::{self, BuildEvent, EventRecord, ProgressSink, PullBlobKind, PullBlobOutcome};

use super::store::human;

/// How a build ended, for the last frame.
pub enum Finish<'a> {
    /// Built.
    Built(&'a build::BuildOutput),
    /// Failed (the error is printed after the frame).
    Failed,
    /// Cancelled (Ctrl-C or SIGTERM).
    Cancelled,
}

/// One of the three displays.
pub enum Display {
    /// BuildKit's plain log, with the step report at the end.
    Plain(PlainProgress),
    /// The live view.
    Tty(Arc<TtyProgress>),
    /// JSON lines on stdout.
    Json(JsonProgress),
}

impl Display {
    /// The display for `mode` (`plain`, `tty` or `json`).
    pub fn new(mode: &str) -> Display {
        match mode {
            "json" => Display::Json(JsonProgress),
            "tty" => Display::Tty(TtyProgress::start()),
            _ => Display::Plain(PlainProgress::new()),
        }
    }

    /// Where the build's events go.
    pub fn sink(&self) -> &dyn ProgressSink {
        match self {
            Display::Plain(p) => p,
            Display::Tty(t) => t.as_ref(),
            Display::Json(j) => j,
        }
    }

    /// A line for the user on stderr, above the live view in tty mode (safe from any thread).
    pub fn notice(&self, text: &str) {
        match self {
            Display::Tty(t) => t.print_above(text),
            _ => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }

    /// Stops the live view and writes the end of the display: in tty mode one line per stage
    /// (when built), in plain mode the step report.
    pub fn finish(&self, how: Finish<'_>) -> std::io::Result<()> {
        match (self, how) {
            (Display::Tty(t), how) => t.finish(&how),
            (Display::Plain(_), Finish::Built(out)) => {
                write_report(&mut std::io::stderr().lock(), out)
            }
            _ => Ok(()),
        }
    }

    /// A closing line (`built ...`, `tagged ...`) on stderr, cut to the terminal in tty mode.
    pub fn line(&self, text: &str) -> std::io::Result<()> {
        let width = match self {
            Display::Tty(t) => t.width,
            _ => usize::MAX,
        };
        writeln!(std::io::stderr().lock(), "{}", cut(text, width))
    }
}

/// The build report: one line per step, `CACHED` or its time.
fn write_report(err: &mut impl Write, out: &build::BuildOutput) -> std::io::Result<()> {
    writeln!(err, "build report:")?;
    for s in &out.steps {
        let status = if s.cached {
            "CACHED".to_string()
        } else {
            format!("{:.1}s", s.duration_ms as f64 / 1000.0)
        };
        writeln!(err, "  {status:>7}  [stage {}, line {}] {}", s.stage, s.line, s.created_by)?;
    }
    Ok(())
}

/// One [`EventRecord`] per event on stdout (`{"version":1,"event":...}`).
pub struct JsonProgress;

impl ProgressSink for JsonProgress {
    fn event(&self, e: &BuildEvent) {
        if let Ok(line) = serde_json::to_string(&EventRecord::new(e)) {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    }
}

/// BuildKit's `--progress=plain` shape: `#N [stage] INSTRUCTION`, output lines as `#N 0.123 text`,
/// `#N DONE 1.2s`.
pub struct PlainProgress {
    start: Instant,
    steps: Mutex<HashMap<(usize, usize), (usize, Instant)>>,
    /// Blobs of pulled bases being downloaded: kind and size, by digest.
    blobs: Mutex<HashMap<String, (PullBlobKind, u64)>>,
}

impl PlainProgress {
    fn new() -> Self {
        PlainProgress {
            start: Instant::now(),
            steps: Mutex::new(HashMap::new()),
            blobs: Mutex::new(HashMap::new()),
        }
    }
}

impl ProgressSink for PlainProgress {
    fn event(&self, e: &BuildEvent) {
        let mut err = std::io::stderr().lock();
        let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        let n_of = |steps: &HashMap<(usize, usize), (usize, Instant)>, stage, step| {
            steps.get(&(stage, step)).map(|s| s.0).unwrap_or(0)
        };
        let _ = match e {
            BuildEvent::StageStart { stage, name, base, platform, .. } => {
                let name = name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
                let platform = platform.as_deref().map(|p| format!(" [{p}]")).unwrap_or_default();
                writeln!(err, "=> stage {stage}{name}{platform} FROM {base}")
            }
            BuildEvent::StepStart { stage, step, line, text } => {
                let n = steps.len() + 1;
                steps.insert((*stage, *step), (n, Instant::now()));
                writeln!(err, "#{n} [stage {stage}, line {line}] {text}")
            }
            BuildEvent::ContextScanned { stage, step, files, bytes } => {
                let n = n_of(&steps, *stage, *step);
                writeln!(err, "#{n} context: {}", files_bytes(*files, *bytes))
            }
            BuildEvent::CopyStaged { stage, step, files, bytes } => {
                let n = n_of(&steps, *stage, *step);
                writeln!(err, "#{n} copied {}", files_bytes(*files, *bytes))
            }
            BuildEvent::StepOutput { stage, step, line, .. } => {
                let n = n_of(&steps, *stage, *step);
                writeln!(err, "#{n} {:.3} {line}", self.start.elapsed().as_secs_f64())
            }
            BuildEvent::StepCached { stage, step } => {
                writeln!(err, "#{} CACHED", n_of(&steps, *stage, *step))
            }
            BuildEvent::CacheMiss { stage, step, reason } => {
                writeln!(err, "#{} cache miss: {reason}", n_of(&steps, *stage, *step))
            }
            BuildEvent::StepPhases { stage, step, phases } => {
                let n = n_of(&steps, *stage, *step);
                writeln!(err, "#{n} phases: {}", phase_line(phases))
            }
            BuildEvent::StepDone { stage, step, duration_ms, layer, layer_size, .. } => {
                let n = n_of(&steps, *stage, *step);
                let secs = *duration_ms as f64 / 1000.0;
                match (layer, layer_size) {
                    (Some(l), Some(sz)) => {
                        writeln!(err, "#{n} DONE {secs:.1}s layer {} ({})", short(l), human(*sz))
                    }
                    _ => writeln!(err, "#{n} DONE {secs:.1}s"),
                }
            }
            BuildEvent::CheckWarning { rule, message, line, .. } => {
                writeln!(err, "WARNING: {rule}: {message} (line {line})")
            }
            BuildEvent::Warning { message } => writeln!(err, "WARNING: {message}"),
            BuildEvent::PullStart { reference } => writeln!(err, "=> pulling {reference}"),
            BuildEvent::PullBlobStart { digest, kind, size, .. } => {
                let mut blobs = self.blobs.lock().unwrap_or_else(|p| p.into_inner());
                blobs.insert(digest.clone(), (*kind, *size));
                writeln!(
                    err,
                    "=> {} {} downloading ({})",
                    kind_name(*kind),
                    short(digest),
                    human(*size)
                )
            }
            BuildEvent::PullBlobDone { digest, outcome, .. } => {
                let blobs = self.blobs.lock().unwrap_or_else(|p| p.into_inner());
                writeln!(err, "=> {}", blob_done(digest, *outcome, blobs.get(digest).copied()))
            }
            BuildEvent::PullDone { .. } => writeln!(err, "=> {}", pull_summary(e)),
            _ => Ok(()),
        };
    }
}

fn kind_name(kind: PullBlobKind) -> &'static str {
    match kind {
        PullBlobKind::Layer => "layer",
        PullBlobKind::Config => "config",
        PullBlobKind::Manifest => "manifest",
        _ => "blob",
    }
}

/// `layer 0123456789ab 3.4MB / 3.4MB downloaded`, or `blob 0123456789ab already present`.
fn blob_done(
    digest: &str,
    outcome: PullBlobOutcome,
    started: Option<(PullBlobKind, u64)>,
) -> String {
    match (outcome, started) {
        (PullBlobOutcome::Downloaded, Some((kind, size))) => format!(
            "{} {} {} / {} downloaded",
            kind_name(kind),
            short(digest),
            human(size),
            human(size)
        ),
        (PullBlobOutcome::Downloaded, None) => format!("blob {} downloaded", short(digest)),
        _ => format!("blob {} already present", short(digest)),
    }
}

/// ` => => layer 0123456789ab [=======>            ] 1.2MB / 3.4MB`.
fn blob_bar(p: &PullView) -> String {
    const WIDTH: usize = 20;
    let filled =
        (p.done.min(p.size) * WIDTH as u64).checked_div(p.size).map_or(WIDTH, |f| f as usize);
    let bar: String = (0..WIDTH)
        .map(|i| match i.cmp(&filled) {
            std::cmp::Ordering::Less => '=',
            std::cmp::Ordering::Equal => '>',
            std::cmp::Ordering::Greater => ' ',
        })
        .collect();
    format!(
        " => => {} {} [{bar}] {} / {}",
        kind_name(p.kind),
        short(&p.digest),
        human(p.done),
        human(p.size)
    )
}

/// `context scan+hash 0.12s, copy to staging 1.05s, layer write 2.31s`.
/// `copy to staging 0.90s, layer write 1.16s (tar 0.41s, compress 1.02s, store write 0.11s)`:
/// phases named `PARENT: part` right after `PARENT` are parts of it, shown in parentheses.
fn phase_line(phases: &[strata::build::StepPhase]) -> String {
    let secs = |p: &strata::build::StepPhase| format!("{:.2}s", p.micros as f64 / 1e6);
    let mut out = Vec::new();
    let mut rest = phases;
    while let [first, tail @ ..] = rest {
        let parts: Vec<String> = tail
            .iter()
            .map_while(|p| {
                let part = p.name.strip_prefix(first.name)?.strip_prefix(": ")?;
                Some(format!("{part} {}", secs(p)))
            })
            .collect();
        let mut line = format!("{} {}", first.name, secs(first));
        if !parts.is_empty() {
            line.push_str(&format!(" ({})", parts.join(", ")));
        }
        out.push(line);
        rest = &tail[parts.len()..];
    }
    out.join(", ")
}

/// `3 files, 12kB`.
fn files_bytes(files: u64, bytes: u64) -> String {
    let s = if files == 1 { "" } else { "s" };
    format!("{files} file{s}, {}", human(bytes))
}

/// `pulled host/repo:tag (sha256:...): 3 blobs downloaded (12MB), 1 present`.
fn pull_summary(e: &BuildEvent) -> String {
    match e {
        BuildEvent::PullDone { reference, digest, blobs_downloaded, blobs_present, bytes } => {
            format!(
                "pulled {reference} ({}): {blobs_downloaded} blobs downloaded ({}), {blobs_present} already present",
                short(digest),
                human(*bytes)
            )
        }
        _ => String::new(),
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// `text` cut to `width` characters (terminal columns, for the ASCII this view prints; a
/// wide character may count one column short).
fn cut(text: &str, width: usize) -> String {
    match text.char_indices().nth(width) {
        Some((i, _)) => text[..i].to_string(),
        None => text.to_string(),
    }
}

/// The terminal's size on stderr: (columns, rows); `$COLUMNS`/`$LINES` or 80x24 when stderr
/// is not a terminal.
fn terminal_size() -> (usize, usize) {
    if let Ok(ws) = rustix::termios::tcgetwinsize(std::io::stderr()) {
        if ws.ws_col > 0 && ws.ws_row > 0 {
            return (ws.ws_col as usize, ws.ws_row as usize);
        }
    }
    let var = |k: &str, d| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    (var("COLUMNS", 80), var("LINES", 24))
}

/// One step in the live view.
struct StepView {
    stage: usize,
    /// 1-based position in its stage.
    position: usize,
    text: String,
    started: Instant,
    /// Set when done.
    took: Option<Duration>,
    cached: bool,
    /// Files and bytes: `(scanned, staged)`.
    scanned: Option<(u64, u64)>,
    staged: Option<(u64, u64)>,
}

/// A blob of a pulled base being downloaded, in the live view.
struct PullView {
    digest: String,
    kind: PullBlobKind,
    size: u64,
    done: u64,
}

/// A stage as the summary line tells it.
#[derive(Default)]
struct StageView {
    label: String,
    steps: usize,
    started: Option<Instant>,
    took: Duration,
    done: usize,
    cached: usize,
    files: u64,
    bytes: u64,
    layers: usize,
    layer_bytes: u64,
}

#[derive(Default)]
struct TtyState {
    /// Steps planned (ONBUILD triggers added as their stage starts).
    total: usize,
    done: usize,
    steps: Vec<StepView>,
    by_key: HashMap<(usize, usize), usize>,
    stages: BTreeMap<usize, StageView>,
    /// Blobs of pulled bases downloading now, one bar each below the steps.
    pulls: Vec<PullView>,
    /// Kind and size of every blob started, for its line when done.
    pulled: HashMap<String, (PullBlobKind, u64)>,
    /// Lines of the live view on screen now (to move the cursor back over).
    drawn: usize,
    /// No more redraws: the last frame is written.
    finished: bool,
}

/// The live view (see the module docs).
pub struct TtyProgress {
    start: Instant,
    width: usize,
    height: usize,
    state: Mutex<TtyState>,
    stop: AtomicBool,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl TtyProgress {
    /// A view of the current terminal, redrawn by a ticker thread until [`Self::finish`].
    fn start() -> Arc<TtyProgress> {
        let (width, height) = terminal_size();
        let view = Arc::new(TtyProgress {
            start: Instant::now(),
            width: width.max(20),
            height: height.max(5),
            state: Mutex::new(TtyState::default()),
            stop: AtomicBool::new(false),
            ticker: Mutex::new(None),
        });
        let ticking = Arc::clone(&view);
        let handle = std::thread::Builder::new()
            .name("strata-progress".into())
            .spawn(move || {
                while !ticking.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    ticking.redraw(&[]);
                }
            })
            .ok();
        *view.ticker.lock().unwrap_or_else(|p| p.into_inner()) = handle;
        view
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TtyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `above` (lines that scroll away) then the live view over the previous one.
    fn redraw(&self, above: &[String]) {
        let mut state = self.lock();
        self.draw(&mut state, above, None);
    }

    /// `above`, then the frame: the live view, or the final lines when `last` is given.
    fn draw(&self, state: &mut TtyState, above: &[String], last: Option<&[String]>) {
        if state.finished {
            return;
        }
        let mut out = String::new();
        if state.drawn > 0 {
            out.push_str(&format!("\x1b[{}A", state.drawn));
        }
        out.push_str("\r\x1b[J");
        for l in above {
            out.push_str(&cut(l, self.width));
            out.push('\n');
        }
        let frame = match last {
            Some(lines) => lines.to_vec(),
            None => self.frame(state),
        };
        for l in &frame {
            out.push_str(&cut(l, self.width));
            out.push('\n');
        }
        state.drawn = if last.is_some() { 0 } else { frame.len() };
        state.finished = last.is_some();
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(out.as_bytes());
        let _ = err.flush();
    }

    fn header(&self, state: &TtyState, status: &str) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        format!("[+] Building {secs:.1}s ({}/{}){status}", state.done, state.total.max(state.done))
    }

    /// The header and the steps that fit the terminal: every running step, then as many of
    /// the latest finished ones as there is room for.
    fn frame(&self, state: &TtyState) -> Vec<String> {
        let bars = state.pulls.len().min(self.height.saturating_sub(3));
        let room = self.height.saturating_sub(2 + bars).max(1);
        let mut shown: Vec<usize> = (0..state.steps.len()).collect();
        if shown.len() > room {
            let running: Vec<usize> =
                shown.iter().copied().filter(|&i| state.steps[i].took.is_none()).collect();
            let mut keep = running.len().min(room);
            let mut picked: Vec<usize> = running.into_iter().rev().take(keep).collect();
            for i in (0..state.steps.len()).rev() {
                if keep == room {
                    break;
                }
                if state.steps[i].took.is_some() {
                    picked.push(i);
                    keep += 1;
                }
            }
            picked.sort_unstable();
            shown = picked;
        }
        let mut lines = vec![self.header(state, "")];
        lines.extend(shown.into_iter().map(|i| self.step_line(state, &state.steps[i])));
        lines.extend(state.pulls.iter().take(bars).map(blob_bar));
        lines
    }

    /// ` => [build 2/5] COPY src /app/          3 files, 12kB  0.4s`: the counters and
    /// the time stay on screen however long the instruction is.
    fn step_line(&self, state: &TtyState, s: &StepView) -> String {
        let stage = state.stages.get(&s.stage);
        let label = stage.map(|v| v.label.as_str()).unwrap_or("");
        let of = stage.map(|v| v.steps).unwrap_or(0);
        let cached = if s.cached { "CACHED " } else { "" };
        let left = format!(" => {cached}[{label} {}/{of}] {}", s.position, s.text);
        let took = s.took.unwrap_or_else(|| s.started.elapsed());
        let counts = match (s.staged, s.scanned) {
            (Some((f, b)), _) => format!("{}  ", files_bytes(f, b)),
            (None, Some((f, b))) => format!("context {}  ", files_bytes(f, b)),
            (None, None) => String::new(),
        };
        let right = format!("{counts}{:.1}s", took.as_secs_f64());
        let room = self.width.saturating_sub(right.chars().count() + 1);
        let left = cut(&left, room);
        let pad = self.width.saturating_sub(left.chars().count() + right.chars().count());
        format!("{left}{}{right}", " ".repeat(pad.max(1)))
    }

    /// Prints `text` above the live view.
    fn print_above(&self, text: &str) {
        let mut state = self.lock();
        if state.finished {
            let _ = writeln!(std::io::stderr().lock(), "{}", cut(text, self.width));
        } else {
            self.draw(&mut state, &[text.to_string()], None);
        }
    }

    /// Stops the ticker and writes the last frame: a summary line per stage when built, the
    /// steps as they stood when the build failed or was cancelled.
    fn finish(&self, how: &Finish<'_>) -> std::io::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        let mut state = self.lock();
        let lines = match how {
            Finish::Built(_) => {
                let mut lines = vec![self.header(&state, " FINISHED")];
                lines.extend(state.stages.values().map(stage_summary));
                lines
            }
            Finish::Failed | Finish::Cancelled => {
                let status = if matches!(how, Finish::Failed) { " FAILED" } else { " CANCELLED" };
                let mut frame = self.frame(&state);
                frame[0] = self.header(&state, status);
                frame
            }
        };
        self.draw(&mut state, &[], Some(&lines));
        Ok(())
    }

    fn on_event(&self, state: &mut TtyState, e: &BuildEvent) -> Vec<String> {
        let mut above = Vec::new();
        match e {
            BuildEvent::BuildStart { steps, .. } => state.total += steps,
            BuildEvent::StageStart { stage, name, steps, onbuild_steps, platform, .. } => {
                state.total += onbuild_steps;
                let mut label = name.clone().unwrap_or_else(|| format!("stage-{stage}"));
                if let Some(p) = platform {
                    label = format!("{p} {label}");
                }
                let view = state.stages.entry(*stage).or_default();
                view.label = label;
                view.steps = *steps;
                view.started = Some(Instant::now());
            }
            BuildEvent::StepStart { stage, step, text, .. } => {
                state.by_key.insert((*stage, *step), state.steps.len());
                state.steps.push(StepView {
                    stage: *stage,
                    position: step + 1,
                    text: text.clone(),
                    started: Instant::now(),
                    took: None,
                    cached: false,
                    scanned: None,
                    staged: None,
                });
            }
            BuildEvent::ContextScanned { stage, step, files, bytes } => {
                if let Some(&i) = state.by_key.get(&(*stage, *step)) {
                    state.steps[i].scanned = Some((*files, *bytes));
                }
            }
            BuildEvent::CopyStaged { stage, step, files, bytes } => {
                if let Some(&i) = state.by_key.get(&(*stage, *step)) {
                    state.steps[i].staged = Some((*files, *bytes));
                }
                let view = state.stages.entry(*stage).or_default();
                view.files += files;
                view.bytes += bytes;
            }
            BuildEvent::StepCached { stage, step } => {
                if let Some(&i) = state.by_key.get(&(*stage, *step)) {
                    state.steps[i].cached = true;
                }
                state.stages.entry(*stage).or_default().cached += 1;
            }
            BuildEvent::StepDone { stage, step, layer_size, .. } => {
                state.done += 1;
                let mut cached = false;
                if let Some(&i) = state.by_key.get(&(*stage, *step)) {
                    let s = &mut state.steps[i];
                    s.took = Some(s.started.elapsed());
                    cached = s.cached;
                }
                let view = state.stages.entry(*stage).or_default();
                view.done += 1;
                view.took = view.started.map(|t| t.elapsed()).unwrap_or_default();
                if let (Some(size), false) = (layer_size, cached) {
                    view.layers += 1;
                    view.layer_bytes += size;
                }
            }
            BuildEvent::StepOutput { stage, step, line, .. } => {
                let tag = state
                    .by_key
                    .get(&(*stage, *step))
                    .map(|&i| {
                        let s = &state.steps[i];
                        let label = state.stages.get(&s.stage).map(|v| v.label.as_str());
                        format!("[{} {}] ", label.unwrap_or(""), s.position)
                    })
                    .unwrap_or_default();
                above.push(format!("{tag}{line}"));
            }
            BuildEvent::CheckWarning { rule, message, line, .. } => {
                above.push(format!("WARNING: {rule}: {message} (line {line})"));
            }
            BuildEvent::Warning { message } => above.push(format!("WARNING: {message}")),
            BuildEvent::PullStart { reference } => above.push(format!("pulling {reference}")),
            BuildEvent::PullBlobStart { digest, kind, size, .. } => {
                state.pulled.insert(digest.clone(), (*kind, *size));
                state.pulls.push(PullView {
                    digest: digest.clone(),
                    kind: *kind,
                    size: *size,
                    done: 0,
                });
            }
            BuildEvent::PullBlobProgress { digest, done, .. } => {
                if let Some(p) = state.pulls.iter_mut().find(|p| p.digest == *digest) {
                    p.done = *done;
                }
            }
            BuildEvent::PullBlobDone { digest, outcome, .. } => {
                state.pulls.retain(|p| p.digest != *digest);
                above.push(blob_done(digest, *outcome, state.pulled.get(digest).copied()));
            }
            BuildEvent::PullDone { .. } => above.push(pull_summary(e)),
            _ => {}
        }
        above
    }
}

/// ` => [build] 5 steps (2 cached) 3.2s, copied 12 files, 3.4kB; 2 layers, 1.1MB`.
fn stage_summary(v: &StageView) -> String {
    let s = if v.done == 1 { "" } else { "s" };
    let mut line = format!(" => [{}] {} step{s}", v.label, v.done);
    if v.cached > 0 {
        line.push_str(&format!(" ({} cached)", v.cached));
    }
    line.push_str(&format!(" {:.1}s", v.took.as_secs_f64()));
    if v.files > 0 || v.bytes > 0 {
        line.push_str(&format!(", copied {}", files_bytes(v.files, v.bytes)));
    }
    if v.layers > 0 {
        let s = if v.layers == 1 { "" } else { "s" };
        line.push_str(&format!("; {} layer{s} written, {}", v.layers, human(v.layer_bytes)));
    }
    line
}

impl ProgressSink for TtyProgress {
    fn event(&self, e: &BuildEvent) {
        let mut state = self.lock();
        let above = self.on_event(&mut state, e);
        self.draw(&mut state, &above, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("abcdef", 3), "abc");
        assert_eq!(cut("ab", 3), "ab");
        assert_eq!(cut("✔✔✔✔", 2), "✔✔");
    }

    #[test]
    fn a_pull_bar_shows_bytes_done_of_total() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let p = PullView { digest, kind: PullBlobKind::Layer, size: 4_000_000, done: 1_000_000 };
        assert_eq!(blob_bar(&p), " => => layer abababababab [=====>              ] 1MB / 4MB");
        let empty = PullView { size: 0, done: 0, ..p };
        assert!(blob_bar(&empty).contains("[====================] 0B / 0B"));
    }

    #[test]
    fn step_lines_fit_the_width_and_keep_the_counters() {
        let view = TtyProgress {
            start: Instant::now(),
            width: 60,
            height: 10,
            state: Mutex::new(TtyState::default()),
            stop: AtomicBool::new(true),
            ticker: Mutex::new(None),
        };
        let mut state = TtyState::default();
        let long = "COPY ".to_string() + &"x".repeat(100) + " /dst/";
        for e in [
            BuildEvent::BuildStart { stages: 1, steps: 2 },
            BuildEvent::StageStart {
                stage: 0,
                name: Some("build".into()),
                base: "scratch".into(),
                steps: 2,
                onbuild_steps: 0,
                platform: None,
            },
            BuildEvent::StepStart { stage: 0, step: 0, line: 2, text: long },
            BuildEvent::CopyStaged { stage: 0, step: 0, files: 3, bytes: 1200 },
        ] {
            view.on_event(&mut state, &e);
        }
        let frame = view.frame(&state);
        assert!(frame[0].starts_with("[+] Building "), "{frame:?}");
        assert!(frame[0].ends_with("(0/2)"), "{frame:?}");
        assert_eq!(frame[1].chars().count(), 60, "{frame:?}");
        assert!(frame[1].starts_with(" => [build 1/2] COPY xxx"), "{frame:?}");
        assert!(frame[1].ends_with("3 files, 1.200kB  0.0s"), "{frame:?}");
    }
}
