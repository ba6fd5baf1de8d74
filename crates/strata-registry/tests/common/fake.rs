//! A recording fake registry: a tiny HTTP/1.1 server on 127.0.0.1:0 implementing the parts of
//! the distribution API the client uses, with knobs to misbehave (5xx, broken connections,
//! lies, auth) and a log of every request it saw.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use strata_types::Digest;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: HashMap<String, String>,
    pub body_len: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// How the fake authenticates.
#[derive(Debug, Clone)]
pub enum FakeAuth {
    None,
    /// Basic with this user and password.
    Basic(String, String),
    /// Bearer tokens from `/token`, which wants Basic `user:password` (if given) and issues
    /// tokens valid for `expires_in` seconds (as announced; expiry is forced with
    /// [`Fake::expire_tokens`]).
    Bearer {
        user: Option<(String, String)>,
        expires_in: u64,
    },
}

/// Misbehaviour knobs; each counter is decremented as it fires.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Answer this many requests (of any kind but `/token`) with 503.
    pub unavailable: usize,
    /// Store half of the next PATCH body, then drop the connection without answering.
    pub break_patch: usize,
    /// Send only this many bytes of the next full blob GET longer than that (with the full
    /// Content-Length), then close.
    pub break_blob_get_at: Option<usize>,
    /// Serve these bytes instead of the real ones for blob GETs (the registry lies).
    pub corrupt_blobs: bool,
    /// Announce this Content-Length for blob GETs (and send that many bytes, padded).
    pub wrong_blob_length: Option<usize>,
    /// Redirect blob GETs to this base URL (another server).
    pub redirect_blobs_to: Option<String>,
    /// Ignore Range on blob GETs (answer 200 with everything).
    pub ignore_range: bool,
    /// Answer 403 to every write (POST, PUT, PATCH) under /v2/<repo>/.
    pub forbid_writes: bool,
    /// Accept requests but never answer (for this long), like a wedged server.
    pub stall: Option<std::time::Duration>,
}

#[derive(Default)]
pub struct State {
    pub blobs: HashMap<String, Vec<u8>>,
    /// reference (tag or digest) -> (content type, bytes), per repository.
    pub manifests: HashMap<(String, String), (String, Vec<u8>)>,
    pub uploads: HashMap<String, Vec<u8>>,
    /// Which repository holds which blob (for HEAD and mount).
    pub repo_blobs: HashSet<(String, String)>,
    pub seen: Vec<Seen>,
    pub tokens: HashSet<String>,
    pub token_requests: Vec<Seen>,
    /// Tokens issued, in order.
    pub issued: Vec<String>,
    /// An identity (refresh) token the token service accepts in a POSTed form.
    pub refresh_token: Option<String>,
    /// Bodies of POSTed token forms.
    pub token_forms: Vec<String>,
    pub next_id: u64,
    pub faults: Faults,
    pub chunk_min: Option<u64>,
    pub auth: Option<FakeAuth>,
}

/// The running fake; stops accepting when dropped.
pub struct Fake {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Fake {
    pub fn start(auth: FakeAuth) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State { auth: Some(auth), ..State::default() }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, port, &st));
            }
        });
        Fake { port, state, stop }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.with(|s| s.seen.clone())
    }

    /// Requests with this method whose target contains `part`.
    pub fn count(&self, method: &str, part: &str) -> usize {
        self.seen().iter().filter(|r| r.method == method && r.target.contains(part)).count()
    }

    pub fn expire_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }

    /// Puts a blob into `repo`.
    pub fn put_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let d = Digest::of_bytes(bytes);
        self.with(|s| {
            s.blobs.insert(d.to_string(), bytes.to_vec());
            s.repo_blobs.insert((repo.to_owned(), d.to_string()));
        });
        d
    }

    /// Puts a manifest under `reference` (tag) and under its digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Digest {
        let d = Digest::of_bytes(bytes);
        self.with(|s| {
            for r in [reference.to_owned(), d.to_string()] {
                s.manifests.insert((repo.to_owned(), r), (content_type.to_owned(), bytes.to_vec()));
            }
        });
        d
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close.
    cut_at: Option<usize>,
    /// Close without answering.
    hang_up: bool,
}

impl Reply {
    fn new(status: u16) -> Reply {
        Reply { status, headers: Vec::new(), body: Vec::new(), cut_at: None, hang_up: false }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Reply {
        self.headers.push((k.to_owned(), v.into()));
        self
    }
    fn body(mut self, b: Vec<u8>) -> Reply {
        self.body = b;
        self
    }
}

fn serve(conn: TcpStream, port: u16, state: &Mutex<State>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let seen = Seen { method: method.clone(), target: target.clone(), headers, body_len: len };
        let stall = state.lock().unwrap().faults.stall;
        if let Some(pause) = stall {
            state.lock().unwrap().seen.push(seen);
            std::thread::sleep(pause);
            return;
        }
        let reply = {
            let mut st = state.lock().unwrap();
            route(&mut st, port, &seen, body)
        };
        if reply.hang_up {
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return;
        }
        let mut head =
            format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\n", reply.status, reply.body.len());
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        if method != "HEAD" {
            let n = reply.cut_at.unwrap_or(reply.body.len()).min(reply.body.len());
            if writer.write_all(&reply.body[..n]).is_err() {
                return;
            }
            if reply.cut_at.is_some() {
                let _ = writer.flush();
                let _ = writer.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
        let _ = writer.flush();
    }
}

fn query(target: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    if let Some((_, q)) = target.split_once('?') {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.entry(k.to_owned()).or_default().push(v.replace("%20", " ").replace("%2C", ","));
        }
    }
    out
}

fn authorized(st: &mut State, port: u16, req: &Seen, repo: &str) -> Option<Reply> {
    match st.auth.clone().unwrap_or(FakeAuth::None) {
        FakeAuth::None => None,
        FakeAuth::Basic(user, pass) => {
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            );
            (req.header("authorization") != Some(want.as_str()))
                .then(|| Reply::new(401).header("WWW-Authenticate", "Basic realm=\"fake\""))
        }
        FakeAuth::Bearer { .. } => {
            let token = req.header("authorization").and_then(|a| a.strip_prefix("Bearer "));
            if token.is_some_and(|t| st.tokens.contains(t)) {
                return None;
            }
            let scope = if repo.is_empty() {
                String::new()
            } else {
                format!(",scope=\"repository:{repo}:pull\"")
            };
            Some(Reply::new(401).header(
                "WWW-Authenticate",
                format!("Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\"{scope}"),
            ))
        }
    }
}

fn route(st: &mut State, port: u16, req: &Seen, body: Vec<u8>) -> Reply {
    let path = req.target.split('?').next().unwrap_or_default().to_owned();
    if path == "/token" {
        st.token_requests.push(req.clone());
        if let Some(FakeAuth::Bearer { user, expires_in }) = st.auth.clone() {
            if req.method == "POST" {
                let form = String::from_utf8_lossy(&body).into_owned();
                st.token_forms.push(form.clone());
                let wanted = st.refresh_token.clone().map(|t| format!("refresh_token={t}"));
                let ok = form.contains("grant_type=refresh_token")
                    && wanted.is_some_and(|w| form.split('&').any(|kv| kv == w));
                if !ok {
                    return Reply::new(401);
                }
                st.next_id += 1;
                let token = format!("tok-{}", st.next_id);
                st.tokens.insert(token.clone());
                st.issued.push(token.clone());
                let json = format!("{{\"access_token\":\"{token}\",\"expires_in\":{expires_in}}}");
                return Reply::new(200).body(json.into_bytes());
            }
            if let Some((u, p)) = user {
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                );
                if req.header("authorization") != Some(want.as_str()) {
                    return Reply::new(401);
                }
            }
            st.next_id += 1;
            let token = format!("tok-{}", st.next_id);
            st.tokens.insert(token.clone());
            st.issued.push(token.clone());
            let json = format!("{{\"token\":\"{token}\",\"expires_in\":{expires_in}}}");
            return Reply::new(200)
                .header("Content-Type", "application/json")
                .body(json.into_bytes());
        }
        return Reply::new(404);
    }
    st.seen.push(req.clone());
    if st.faults.unavailable > 0 {
        st.faults.unavailable -= 1;
        return Reply::new(503)
            .header("Retry-After", "0")
            .body(b"{\"errors\":[{\"code\":\"UNAVAILABLE\"}]}".to_vec());
    }
    let Some(rest) = path.strip_prefix("/v2/") else { return Reply::new(404) };
    if rest.is_empty() {
        return authorized(st, port, req, "").unwrap_or_else(|| Reply::new(200));
    }
    let (repo, kind, tail) = if let Some(i) = rest.rfind("/blobs/uploads") {
        (&rest[..i], "uploads", rest[i + "/blobs/uploads".len()..].trim_start_matches('/'))
    } else if let Some(i) = rest.rfind("/blobs/") {
        (&rest[..i], "blobs", &rest[i + "/blobs/".len()..])
    } else if let Some(i) = rest.rfind("/manifests/") {
        (&rest[..i], "manifests", &rest[i + "/manifests/".len()..])
    } else {
        return Reply::new(404);
    };
    let (repo, tail) = (repo.to_owned(), tail.to_owned());
    if let Some(deny) = authorized(st, port, req, &repo) {
        return deny;
    }
    if st.faults.forbid_writes && matches!(req.method.as_str(), "POST" | "PUT" | "PATCH") {
        return Reply::new(403).body(b"{\"errors\":[{\"code\":\"DENIED\"}]}".to_vec());
    }
    let q = query(&req.target);
    match (req.method.as_str(), kind) {
        ("HEAD" | "GET", "blobs") => {
            if !st.repo_blobs.contains(&(repo.clone(), tail.clone())) {
                return Reply::new(404);
            }
            let mut bytes = st.blobs.get(&tail).cloned().unwrap_or_default();
            if req.method == "HEAD" {
                return Reply::new(200).body(bytes);
            }
            if let Some(base) = &st.faults.redirect_blobs_to {
                return Reply::new(307).header("Location", format!("{base}{}", req.target));
            }
            if st.faults.corrupt_blobs {
                for b in bytes.iter_mut().take(4) {
                    *b ^= 0xff;
                }
            }
            if let Some(n) = st.faults.wrong_blob_length {
                bytes.resize(n, 0);
            }
            if let (Some(range), false) = (req.header("range"), st.faults.ignore_range) {
                let start: usize = range
                    .trim_start_matches("bytes=")
                    .split('-')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let total = bytes.len();
                return Reply::new(206)
                    .header("Content-Range", format!("bytes {start}-{}/{total}", total - 1))
                    .body(bytes[start.min(total)..].to_vec());
            }
            let mut reply = Reply::new(200).body(bytes);
            if let Some(at) = st.faults.break_blob_get_at.filter(|at| *at < reply.body.len()) {
                st.faults.break_blob_get_at = None;
                reply.cut_at = Some(at);
            }
            reply
        }
        ("POST", "uploads") => {
            if let (Some(mount), Some(from)) = (q.get("mount"), q.get("from")) {
                let (mount, from) = (mount[0].clone(), from[0].clone());
                if st.repo_blobs.contains(&(from, mount.clone())) {
                    st.repo_blobs.insert((repo.clone(), mount.clone()));
                    return Reply::new(201).header("Location", format!("/v2/{repo}/blobs/{mount}"));
                }
            }
            st.next_id += 1;
            let id = format!("u{}", st.next_id);
            st.uploads.insert(id.clone(), Vec::new());
            let mut reply = Reply::new(202)
                .header("Location", format!("/v2/{repo}/blobs/uploads/{id}"))
                .header("Range", "0-0");
            if let Some(min) = st.chunk_min {
                reply = reply.header("OCI-Chunk-Min-Length", min.to_string());
            }
            reply
        }
        ("PATCH", "uploads") => {
            let Some(data) = st.uploads.get_mut(&tail) else { return Reply::new(404) };
            let range = req.header("content-range").unwrap_or_default().to_owned();
            let start: usize =
                range.split('-').next().and_then(|s| s.parse().ok()).unwrap_or(usize::MAX);
            if start != data.len() {
                return Reply::new(416).header("Range", format!("0-{}", data.len() as i64 - 1));
            }
            if st.faults.break_patch > 0 {
                st.faults.break_patch -= 1;
                data.extend_from_slice(&body[..body.len() / 2]);
                return Reply { hang_up: true, ..Reply::new(0) };
            }
            data.extend_from_slice(&body);
            let end = data.len() as i64 - 1;
            Reply::new(202)
                .header(
                    "Location",
                    format!("http://127.0.0.1:{port}/v2/{repo}/blobs/uploads/{tail}"),
                )
                .header("Range", format!("0-{end}"))
        }
        ("GET", "uploads") => {
            let Some(data) = st.uploads.get(&tail) else { return Reply::new(404) };
            Reply::new(204)
                .header("Location", format!("/v2/{repo}/blobs/uploads/{tail}"))
                .header("Range", format!("0-{}", data.len() as i64 - 1))
        }
        ("PUT", "uploads") => {
            let Some(mut data) = st.uploads.remove(&tail) else { return Reply::new(404) };
            data.extend_from_slice(&body);
            let want = q.get("digest").map(|d| d[0].clone()).unwrap_or_default();
            let got = Digest::of_bytes(&data).to_string();
            if want != got {
                return Reply::new(400)
                    .body(b"{\"errors\":[{\"code\":\"DIGEST_INVALID\"}]}".to_vec());
            }
            st.blobs.insert(got.clone(), data);
            st.repo_blobs.insert((repo.clone(), got.clone()));
            Reply::new(201).header("Location", format!("/v2/{repo}/blobs/{got}"))
        }
        ("DELETE", "uploads") => match st.uploads.remove(&tail) {
            Some(_) => Reply::new(204),
            None => Reply::new(404),
        },
        ("GET" | "HEAD", "manifests") => match st.manifests.get(&(repo.clone(), tail.clone())) {
            Some((ct, bytes)) => Reply::new(200)
                .header("Content-Type", ct.clone())
                .header("Docker-Content-Digest", Digest::of_bytes(bytes).to_string())
                .body(bytes.clone()),
            None => {
                Reply::new(404).body(b"{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}".to_vec())
            }
        },
        ("PUT", "manifests") => {
            let ct = req.header("content-type").unwrap_or_default().to_owned();
            let d = Digest::of_bytes(&body);
            for r in [tail.clone(), d.to_string()] {
                st.manifests.insert((repo.clone(), r), (ct.clone(), body.clone()));
            }
            Reply::new(201).header("Docker-Content-Digest", d.to_string())
        }
        _ => Reply::new(405),
    }
}
