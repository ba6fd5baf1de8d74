//! The HTTP side: endpoints, the agent, and one request with authentication and retries.
//!
//! Every request goes through [`Client::send`], which attaches what the registry asked for last
//! time (Basic credentials or a Bearer token for the request's scopes), answers a `401` by
//! reading its `WWW-Authenticate` challenge and trying once more with the credentials it asks
//! for, and retries 5xx responses and broken connections a bounded number of times with
//! exponential back-off when the request is safe to repeat. Status codes are returned to the
//! caller, which knows what they mean at that point of the protocol.
//!
//! Time limits are about progress, not duration: a transfer may take an hour as long as bytes
//! keep moving, but once no byte has been received or sent for the stall timeout
//! ([`ClientOptions::stall_timeout`]) the request fails with [`RegistryError::Stalled`] and is
//! not retried. A retry would start the wait again, and a registry that went quiet once
//! usually does again: the silence a user sits through stays bounded by one stall timeout
//! instead of one per attempt.

use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use ureq::http::{Response, StatusCode};
use ureq::tls::{RootCerts, TlsConfig};
use ureq::{Agent, Body, SendBody};

use strata_store::Store;

use crate::auth::AuthCache;
use crate::credentials::{self, Credential};
use crate::error::RegistryError;
use crate::Reference;

/// Default retries when [`ClientOptions::retries`] is 0.
const DEFAULT_RETRIES: u32 = 3;
/// Blobs up to this size are uploaded in one `PUT`; larger ones in chunks.
pub(crate) const MONOLITHIC_MAX: u64 = 16 << 20;
/// Size of one `PATCH` of a chunked upload (raised to the registry's `OCI-Chunk-Min-Length`).
pub(crate) const CHUNK_SIZE: u64 = 16 << 20;
/// The host the `docker.io` name stands for.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Longest `Retry-After` (seconds) honoured before a retry.
const MAX_RETRY_AFTER: u64 = 10;
/// Longest wait for the TLS probe of an insecure registry.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default stall timeout (see [`ClientOptions::stall_timeout`]).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How a [`Client`] reaches registries.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Registries (host or host:port; an entry without a port covers every port of that host;
    /// `*` covers every registry) reached without TLS verification: HTTPS with certificate
    /// checks off when the registry speaks TLS, else plain HTTP (like Docker's
    /// insecure-registries and skopeo's `--tls-verify=false`). Loopback hosts (127.0.0.0/8,
    /// ::1, localhost) use plain HTTP without being listed.
    pub insecure: Vec<String>,
    /// Credential file override (`$REGISTRY_AUTH_FILE` semantics); `None` = the default search
    /// (`$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`).
    pub auth_file: Option<PathBuf>,
    /// Retries for 5xx responses and broken connections, per request and per blob upload or
    /// download; 0 means the default, 3. A stall is never retried.
    pub retries: u32,
    /// How long a request may go without a byte received or sent before it is declared
    /// stalled and fails with [`RegistryError::Stalled`] (the CLI's `--timeout`). Progress,
    /// not duration, is what counts: a slow download that keeps moving never stalls. Also
    /// bounds connecting. `None` (or zero) means [`DEFAULT_STALL_TIMEOUT`], 30 s.
    pub stall_timeout: Option<Duration>,
}

/// A registry client: an HTTP agent (connection pool, rustls), credentials and a token cache.
/// `Send + Sync`; share one across threads and transfers.
pub struct Client {
    agent: Agent,
    /// Same as `agent` with TLS certificate checks off, for registries listed as insecure.
    unverified_agent: Agent,
    /// How each insecure registry turned out to be reachable (probed once).
    schemes: std::sync::Mutex<std::collections::HashMap<String, bool>>,
    timeout: Duration,
    options: ClientOptions,
    retries: u32,
    backoff: Duration,
    pub(crate) monolithic_max: u64,
    pub(crate) chunk_size: u64,
    pub(crate) auth: AuthCache,
    hints: Option<Store>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("options", &self.options).finish_non_exhaustive()
    }
}

/// Where a repository lives: the registry as named, its base URL, and the repository path.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// `host[:port]` as written in the reference (`docker.io` for Docker Hub names).
    pub registry: String,
    /// `scheme://host[:port]` of the API.
    pub base: String,
    /// The repository path (`library/` added for official Docker Hub images).
    pub repository: String,
    /// HTTPS without certificate checks (an insecure registry that speaks TLS).
    pub unverified_tls: bool,
}

impl Endpoint {
    /// `<base>/v2/<repository>/<rest>`.
    pub fn url(&self, rest: &str) -> String {
        format!("{}/v2/{}/{}", self.base, self.repository, rest)
    }

    /// `registry/repository`, the key of the blob-location records.
    pub fn location(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Resolves a `Location` header (absolute, or relative to the registry) to a URL.
    pub fn resolve_location(&self, location: &str) -> Result<String, RegistryError> {
        // RFC 3986 section 3.1: a scheme is case-insensitive (`HTTPS://` is absolute too).
        let scheme = location.get(..8).unwrap_or(location).to_ascii_lowercase();
        if scheme.starts_with("http://") || scheme.starts_with("https://") {
            Ok(location.to_owned())
        } else if location.starts_with('/') {
            Ok(format!("{}{}", self.base, location))
        } else if location.is_empty() {
            Err(RegistryError::InvalidHeader {
                registry: self.registry.clone(),
                header: "Location",
                value: location.to_owned(),
            })
        } else {
            Ok(format!("{}/{}", self.base, location))
        }
    }
}

/// The body of a request; each attempt reads it afresh, so every kind can be re-sent.
#[derive(Clone, Copy)]
pub(crate) enum Payload<'a> {
    /// No body (GET, HEAD).
    None,
    /// Bytes in memory (`Content-Length` set).
    Bytes(&'a [u8]),
    /// A range of a file, read with `pread`, reporting bytes sent to `progress`; `check` sees
    /// each read (its file offset and bytes) before they are sent and may refuse them.
    File {
        file: &'a File,
        offset: u64,
        len: u64,
        progress: &'a (dyn Fn(u64) + Sync),
        check: &'a (dyn Fn(u64, &[u8]) -> io::Result<()> + Sync),
    },
}

/// One request: method, URL, headers, body, and whether it may be repeated after a 5xx or a
/// broken connection.
pub(crate) struct Req<'a> {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Payload<'a>,
    pub idempotent: bool,
}

impl<'a> Req<'a> {
    pub fn new(method: &'static str, url: String) -> Req<'a> {
        Req { method, url, headers: Vec::new(), body: Payload::None, idempotent: true }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Req<'a> {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: Payload<'a>) -> Req<'a> {
        self.body = body;
        self
    }

    pub fn not_idempotent(mut self) -> Req<'a> {
        self.idempotent = false;
        self
    }
}

impl Client {
    /// A client with `options`; loads the system's CA bundle for HTTPS (the first of
    /// `$SSL_CERT_FILE` and the usual distribution paths that exists), else uses the WebPKI roots.
    pub fn new(options: ClientOptions) -> Result<Client, RegistryError> {
        let roots = system_roots()?;
        let timeout =
            options.stall_timeout.filter(|t| !t.is_zero()).unwrap_or(DEFAULT_STALL_TIMEOUT);
        let agent = build_agent(roots.clone(), timeout, false);
        let unverified_agent = build_agent(roots.clone(), timeout, true);
        let retries = if options.retries == 0 { DEFAULT_RETRIES } else { options.retries };
        Ok(Client {
            agent,
            unverified_agent,
            schemes: std::sync::Mutex::new(std::collections::HashMap::new()),
            timeout,
            options,
            retries,
            backoff: Duration::from_millis(200),
            monolithic_max: MONOLITHIC_MAX,
            chunk_size: CHUNK_SIZE,
            auth: AuthCache::new(roots),
            hints: None,
        })
    }

    /// Replaces the stall timeout ([`ClientOptions::stall_timeout`], default 30 s): a
    /// registry that accepts no connection, or sends and reads nothing for this long, fails
    /// the request instead of hanging. Zero means the default.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        let timeout = if timeout.is_zero() { DEFAULT_STALL_TIMEOUT } else { timeout };
        self.timeout = timeout;
        self.options.stall_timeout = Some(timeout);
        self.agent = build_agent(self.auth.roots.clone(), timeout, false);
        self.unverified_agent = build_agent(self.auth.roots.clone(), timeout, true);
        self
    }

    /// Also trusts the CA certificates in the PEM file at `path` for HTTPS (a private
    /// registry's CA, like Docker's `certs.d/<host>/ca.crt`), besides the system's bundle.
    /// (When no system bundle was found, these become the only trusted roots.)
    pub fn with_ca_file(mut self, path: &Path) -> Result<Client, RegistryError> {
        let cert_error = |source| RegistryError::RootCertificates {
            path: path.to_owned(),
            source: Box::new(source),
        };
        let pem = std::fs::read(path).map_err(|e| cert_error(ureq::Error::Io(e)))?;
        let mut certs = match &self.auth.roots {
            RootCerts::Specific(existing) => existing.as_ref().clone(),
            _ => Vec::new(),
        };
        let before = certs.len();
        for item in ureq::tls::parse_pem(&pem) {
            if let ureq::tls::PemItem::Certificate(c) = item.map_err(cert_error)? {
                certs.push(c);
            }
        }
        if certs.len() == before {
            return Err(cert_error(ureq::Error::Tls("no certificate in the file")));
        }
        self.auth.roots = RootCerts::Specific(Arc::new(certs));
        self.agent = build_agent(self.auth.roots.clone(), self.timeout, false);
        Ok(self)
    }

    /// Sets the size above which blobs are uploaded in chunks, and the chunk size (both default
    /// 16 MiB; a registry's `OCI-Chunk-Min-Length` raises the chunk size).
    pub fn with_chunking(mut self, monolithic_max: u64, chunk_size: u64) -> Client {
        self.monolithic_max = monolithic_max;
        self.chunk_size = chunk_size.max(1);
        self
    }

    /// Names the store that remembers where blobs live (the blob-location records used for
    /// cross-repository mounts) and that pulls may copy blobs from instead of downloading them.
    /// By default each transfer uses the store it reads or writes; set this to the user's main
    /// store when transfers go through scratch layouts (`oci:DIR`, `docker-archive:` sources,
    /// registry-to-file copies), so what they learn is not lost with the layout.
    pub fn with_blob_hints(mut self, store: Store) -> Client {
        self.hints = Some(store);
        self
    }

    /// The store holding blob-location records for transfers on `store`.
    pub(crate) fn hints<'s>(&'s self, store: &'s Store) -> &'s Store {
        self.hints.as_ref().unwrap_or(store)
    }

    /// Sets the first retry delay (doubled per attempt, default 200 ms).
    pub fn with_backoff(mut self, backoff: Duration) -> Client {
        self.backoff = backoff;
        self
    }

    /// Retries allowed per request or blob.
    pub(crate) fn retries(&self) -> u32 {
        self.retries
    }

    /// How long nothing may move before a request is declared stalled.
    pub(crate) fn stall_timeout(&self) -> Duration {
        self.timeout
    }

    /// The error for `method url` on `ep`'s registry having moved no byte for the stall
    /// timeout.
    pub(crate) fn stalled(&self, ep: &Endpoint, method: &str, url: &str) -> RegistryError {
        RegistryError::Stalled {
            registry: ep.registry.clone(),
            method: method.to_owned(),
            url: url.to_owned(),
            timeout: self.timeout,
        }
    }

    /// Sleeps before retry number `attempt` (1-based).
    pub(crate) fn pause(&self, attempt: u32) {
        let factor = 1u32 << attempt.saturating_sub(1).min(5);
        std::thread::sleep(self.backoff.saturating_mul(factor).min(Duration::from_secs(5)));
    }

    /// GET `/v2/` with the credentials this client would use; Ok when authenticated (what
    /// `strata login` checks before saving credentials). `username`/`password` replace whatever
    /// the credential files say for `registry`.
    pub fn check_login(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<(), RegistryError> {
        let ep = self.registry_endpoint(registry);
        let cred = Credential { username: username.to_owned(), password: password.to_owned() };
        self.auth.set_credential(registry, Some(cred));
        let result = self.ping(&ep);
        self.auth.forget(registry);
        result
    }

    /// GET `/v2/` (distribution-spec "Determining support"): Ok when it answers 200.
    pub fn ping_registry(&self, registry: &str) -> Result<(), RegistryError> {
        self.ping(&self.registry_endpoint(registry))
    }

    fn ping(&self, ep: &Endpoint) -> Result<(), RegistryError> {
        let req = Req::new("GET", format!("{}/v2/", ep.base));
        let resp = self.send(ep, &[], &req)?;
        match resp.status().as_u16() {
            200 => Ok(()),
            _ => Err(self.status_error(ep, &req, resp)),
        }
    }

    /// Learns how `ep`'s registry authenticates before blobs move in parallel: one `GET /v2/`
    /// (spec.md "Determining support") answered with credentials or a token for `scopes`, so
    /// the parallel requests that follow carry the right header instead of each collecting a
    /// 401 and fetching its own token.
    pub(crate) fn prepare(&self, ep: &Endpoint, scopes: &[String]) -> Result<(), RegistryError> {
        if self.auth.probed(&ep.registry) {
            return Ok(());
        }
        let req = Req::new("GET", format!("{}/v2/", ep.base));
        let resp = self.send(ep, scopes, &req)?;
        match resp.status().as_u16() {
            200 => {
                self.auth.mark_probed(&ep.registry);
                Ok(())
            }
            // Some registries answer /v2/ oddly (404 behind a path router); the real requests
            // will tell.
            404 => Ok(()),
            _ => Err(self.status_error(ep, &req, resp)),
        }
    }

    /// The endpoint for a reference's repository.
    pub(crate) fn endpoint(&self, reference: &Reference) -> Endpoint {
        let mut ep = self.registry_endpoint(reference.domain().unwrap_or("docker.io"));
        let path = reference.path();
        ep.repository = if is_docker_hub(&ep.registry) && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        ep
    }

    /// Where `registry` is reached: HTTPS (verified) by default; plain HTTP for loopback
    /// hosts; for a registry listed as insecure, HTTPS without certificate checks if it speaks
    /// TLS, else plain HTTP (one probe per registry, remembered), as Docker's
    /// insecure-registries and skopeo's `--tls-verify=false` do.
    fn registry_endpoint(&self, registry: &str) -> Endpoint {
        let registry = registry.trim_end_matches('/').to_owned();
        let api_host = if is_docker_hub(&registry) { DOCKER_HUB_API } else { registry.as_str() };
        let endpoint = |scheme: &str, unverified_tls| Endpoint {
            base: format!("{scheme}://{api_host}"),
            registry: registry.clone(),
            repository: String::new(),
            unverified_tls,
        };
        if is_loopback(&registry) {
            return endpoint("http", false);
        }
        if !self.options.insecure.iter().any(|h| insecure_entry_matches(h, &registry)) {
            return endpoint("https", false);
        }
        let known =
            self.schemes.lock().unwrap_or_else(PoisonError::into_inner).get(&registry).copied();
        let tls = known.unwrap_or_else(|| {
            let tls = self.speaks_tls(api_host);
            self.schemes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(registry.clone(), tls);
            tls
        });
        if tls {
            endpoint("https", true)
        } else {
            endpoint("http", false)
        }
    }

    /// Whether `host` answers HTTPS at all (any HTTP response, certificate unchecked).
    fn speaks_tls(&self, host: &str) -> bool {
        self.unverified_agent
            .get(format!("https://{host}/v2/"))
            .config()
            .timeout_global(Some(PROBE_TIMEOUT.min(self.timeout)))
            .build()
            .call()
            .is_ok()
    }

    /// The agent for requests to `ep`.
    pub(crate) fn agent_for(&self, ep: &Endpoint) -> &Agent {
        if ep.unverified_tls {
            &self.unverified_agent
        } else {
            &self.agent
        }
    }

    /// The credential for `registry`, from the override set by `check_login` or the files.
    pub(crate) fn credential(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        if let Some(found) = self.auth.cached_credential(registry) {
            return Ok(found);
        }
        let found = credentials::find(registry, self.options.auth_file.as_deref())?;
        self.auth.set_credential(registry, found.clone());
        Ok(found)
    }

    /// Sends `req` with authentication for `scopes` (token-spec scope strings), answering one
    /// 401 challenge and retrying 5xx / broken connections when `req.idempotent`.
    pub(crate) fn send(
        &self,
        ep: &Endpoint,
        scopes: &[String],
        req: &Req<'_>,
    ) -> Result<Response<Body>, RegistryError> {
        let mut attempt = 0;
        let mut answered_challenge = false;
        loop {
            attempt += 1;
            let auth = self.auth.header(self, ep, scopes)?;
            match self.execute(self.agent_for(ep), req, auth.as_ref().map(|a| a.value.as_str())) {
                Err(e) => {
                    if req.idempotent && attempt <= self.retries && is_retryable(&e) {
                        self.pause(attempt);
                        continue;
                    }
                    if is_stall(&e) {
                        return Err(self.stalled(ep, req.method, &req.url));
                    }
                    return Err(transport_error(ep, req, attempt, e));
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if status == 401 && !answered_challenge {
                        answered_challenge = true;
                        if self.auth.challenged(self, ep, scopes, &resp, auth.as_ref())? {
                            attempt -= 1;
                            continue;
                        }
                        return Ok(resp);
                    }
                    if is_retryable_status(status) && req.idempotent && attempt <= self.retries {
                        // RFC 9110 Retry-After in seconds (capped), else exponential back-off.
                        let wait = header(&resp, "Retry-After")
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(|s| Duration::from_secs(s.min(MAX_RETRY_AFTER)));
                        drop(resp);
                        match wait {
                            Some(wait) => std::thread::sleep(wait),
                            None => self.pause(attempt),
                        }
                        continue;
                    }
                    return Ok(resp);
                }
            }
        }
    }

    /// One HTTP exchange.
    fn execute(
        &self,
        agent: &Agent,
        req: &Req<'_>,
        auth: Option<&str>,
    ) -> Result<Response<Body>, ureq::Error> {
        let mut builder = ureq::http::Request::builder().method(req.method).uri(req.url.as_str());
        for (name, value) in &req.headers {
            builder = builder.header(*name, value.as_str());
        }
        if let Some(auth) = auth {
            builder = builder.header("Authorization", auth);
        }
        match req.body {
            Payload::None if matches!(req.method, "GET" | "HEAD" | "DELETE") => {
                agent.run(builder.body(()).map_err(ureq::Error::Http)?)
            }
            Payload::None => agent.run(builder.body(&[][..]).map_err(ureq::Error::Http)?),
            Payload::Bytes(bytes) => agent.run(builder.body(bytes).map_err(ureq::Error::Http)?),
            Payload::File { file, offset, len, progress, check } => {
                let mut reader =
                    FileRange { file, pos: offset, end: offset + len, sent: 0, progress, check };
                let builder = builder.header("Content-Length", len.to_string());
                let body = SendBody::from_reader(&mut reader);
                agent.run(builder.body(body).map_err(ureq::Error::Http)?)
            }
        }
    }

    /// The error for a response the caller did not expect: 401/403 with context, else the
    /// status and the start of the body.
    pub(crate) fn status_error(
        &self,
        ep: &Endpoint,
        req: &Req<'_>,
        resp: Response<Body>,
    ) -> RegistryError {
        let credentials_sent = self.auth.credentials_sent(&ep.registry);
        match resp.status() {
            StatusCode::UNAUTHORIZED => RegistryError::Unauthorized {
                registry: ep.registry.clone(),
                repository: ep.repository.clone(),
                credentials_sent,
            },
            StatusCode::FORBIDDEN => RegistryError::Denied {
                registry: ep.registry.clone(),
                repository: ep.repository.clone(),
                credentials_sent,
            },
            status => {
                let body = body_excerpt(resp);
                RegistryError::UnexpectedStatus {
                    registry: ep.registry.clone(),
                    method: req.method.to_owned(),
                    url: req.url.clone(),
                    status: status.as_u16(),
                    body,
                }
            }
        }
    }
}

/// The first 512 bytes of a body, as text (registries explain errors in JSON there).
pub(crate) fn body_excerpt(resp: Response<Body>) -> String {
    let mut buf = Vec::new();
    let _ = resp.into_body().into_reader().take(512).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_owned()
}

/// A response header as text.
pub(crate) fn header<'r>(resp: &'r Response<Body>, name: &str) -> Option<&'r str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

fn build_agent(roots: RootCerts, timeout: Duration, unverified: bool) -> Agent {
    let tls = TlsConfig::builder().root_certs(roots).disable_verification(unverified).build();
    Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls)
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
        // Blob GETs may be redirected to storage elsewhere (S3, a CDN) with a pre-signed URL:
        // follow, but never carry the Authorization header along. (ureq's `SameHost` compares
        // host names only, ignoring the port, so it would hand a token to any other service
        // on the registry's host.)
        .redirect_auth_headers(ureq::config::RedirectAuthHeaders::Never)
        .max_redirects(10)
        // No byte for `timeout` in any one read or write is a stall (see the module doc);
        // there is deliberately no limit on a whole response that keeps moving.
        .timeout_connect(Some(timeout))
        .timeout_per_read(Some(timeout))
        .timeout_per_write(Some(timeout))
        .build()
        .new_agent()
}

/// The system's CA bundle as rustls roots, else the bundled WebPKI roots.
fn system_roots() -> Result<RootCerts, RegistryError> {
    let mut candidates: Vec<PathBuf> =
        std::env::var_os("SSL_CERT_FILE").map(PathBuf::from).into_iter().collect();
    candidates.extend(
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/ca-bundle.pem",
            "/etc/ssl/cert.pem",
        ]
        .map(PathBuf::from),
    );
    for path in candidates {
        let Ok(pem) = std::fs::read(&path) else { continue };
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => {
                    return Err(RegistryError::RootCertificates { path, source: Box::new(e) })
                }
            }
        }
        if !certs.is_empty() {
            return Ok(RootCerts::Specific(Arc::new(certs)));
        }
    }
    Ok(RootCerts::WebPki)
}

/// An `insecure` entry names `registry` exactly, or names its host when the entry has no port
/// (as Docker's `insecure-registries` does), or is `*` (every registry); a `http://` or
/// `https://` prefix is ignored.
fn insecure_entry_matches(entry: &str, registry: &str) -> bool {
    let entry = entry.trim().trim_end_matches('/');
    if entry == "*" {
        return true;
    }
    let entry =
        entry.strip_prefix("http://").or_else(|| entry.strip_prefix("https://")).unwrap_or(entry);
    entry == registry || (!entry.contains(':') && registry.split(':').next() == Some(entry))
}

fn is_docker_hub(registry: &str) -> bool {
    matches!(registry, "docker.io" | "index.docker.io" | "registry-1.docker.io")
}

/// 127.0.0.0/8, ::1 and localhost, with or without a port.
pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else if registry.matches(':').count() == 1 {
        registry.split(':').next().unwrap_or_default()
    } else {
        registry
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `e` is a TLS failure: ureq reports rustls errors (certificate, handshake, a peer
/// that is not speaking TLS) as `InvalidData` I/O errors carrying the rustls error.
fn is_tls_failure(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Tls(_) => true,
        ureq::Error::Io(io) => io.kind() == io::ErrorKind::InvalidData && io.get_ref().is_some(),
        _ => false,
    }
}

/// Whether `e` says nothing moved for the stall timeout once connected (a connect or
/// resolve timeout means unreachable instead).
pub(crate) fn is_stall(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Timeout(t) => !matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
        ureq::Error::Io(io) => is_stall_io(io),
        _ => false,
    }
}

/// [`is_stall`] for the I/O error a response body's reader returns (ureq wraps its own
/// error in it).
pub(crate) fn is_stall_io(e: &io::Error) -> bool {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<ureq::Error>()) {
        Some(inner) => is_stall(inner),
        None => matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock),
    }
}

/// Broken connections are retried; timeouts are not: a stall has already cost the whole
/// stall timeout, and an unreachable registry would cost it once per attempt.
fn is_retryable(e: &ureq::Error) -> bool {
    !is_tls_failure(e)
        && !is_stall(e)
        && matches!(
            e,
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::Protocol(_)
        )
}

pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 500 | 502 | 503 | 504 | 429)
}

fn transport_error(ep: &Endpoint, req: &Req<'_>, attempts: u32, e: ureq::Error) -> RegistryError {
    if req.url.starts_with("https://") && is_tls_failure(&e) {
        return RegistryError::Tls {
            registry: ep.registry.clone(),
            url: req.url.clone(),
            source: Box::new(e),
        };
    }
    let unreachable = match &e {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::Tls(_) => true,
        ureq::Error::Timeout(t) => {
            matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve)
        }
        ureq::Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::NotFound
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::AddrNotAvailable
        ),
        _ => false,
    };
    if unreachable {
        RegistryError::Unreachable {
            registry: ep.registry.clone(),
            url: req.url.clone(),
            attempts,
            source: Box::new(e),
        }
    } else {
        RegistryError::Transport {
            registry: ep.registry.clone(),
            method: req.method.to_owned(),
            url: req.url.clone(),
            attempts,
            source: Box::new(e),
        }
    }
}

/// A file range read with `pread`, so many uploads can share one open file.
struct FileRange<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
    sent: u64,
    progress: &'a (dyn Fn(u64) + Sync),
    check: &'a (dyn Fn(u64, &[u8]) -> io::Result<()> + Sync),
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob file shorter than expected",
            ));
        }
        (self.check)(self.pos, &buf[..n])?;
        self.pos += n as u64;
        self.sent += n as u64;
        (self.progress)(self.sent);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_use_plain_http() {
        for h in ["127.0.0.1:5000", "127.1.2.3", "localhost:80", "localhost", "[::1]:5000", "::1"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["example.com", "10.0.0.1:5000", "localhost.example:5000", "[::2]:1"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn endpoints_follow_docker_naming() {
        let c = Client::new(ClientOptions {
            insecure: vec!["reg.lan:5000".into()],
            ..Default::default()
        })
        .unwrap();
        let ep = c.endpoint(&"alpine:3".parse().unwrap());
        assert_eq!(
            (ep.base.as_str(), ep.repository.as_str()),
            ("https://registry-1.docker.io", "library/alpine")
        );
        assert_eq!(ep.registry, "docker.io");
        let ep = c.endpoint(&"reg.lan:5000/team/app:v1".parse().unwrap());
        assert_eq!(ep.base, "http://reg.lan:5000");
        let ep = c.endpoint(&"127.0.0.1:5000/app".parse().unwrap());
        assert_eq!(ep.base, "http://127.0.0.1:5000");
        assert!(insecure_entry_matches("reg.lan", "reg.lan:5000"));
        assert!(insecure_entry_matches("http://reg.lan:5000/", "reg.lan:5000"));
        assert!(!insecure_entry_matches("reg.lan:5001", "reg.lan:5000"));
        assert!(!insecure_entry_matches("reg", "reg.lan:5000"));
        assert!(insecure_entry_matches("*", "anything.example:443"));
        let ep = c.endpoint(&"ghcr.io/o/app".parse().unwrap());
        assert_eq!(ep.base, "https://ghcr.io");
        assert_eq!(ep.resolve_location("/v2/x?y").unwrap(), "https://ghcr.io/v2/x?y");
        assert_eq!(ep.resolve_location("https://s3/x").unwrap(), "https://s3/x");
    }
}

/// One repository of one registry as a transfer talks to it: the client, the endpoint, the
/// token scopes its requests need, whether this is a dry run (decide, move nothing), and
/// where per-blob progress goes. What every blob operation of a push, pull or copy shares.
#[derive(Clone, Copy)]
pub(crate) struct Session<'a> {
    pub client: &'a Client,
    pub ep: &'a Endpoint,
    pub scopes: &'a [String],
    pub dry_run: bool,
    pub events: &'a dyn crate::TransferSink,
}

impl<'a> Session<'a> {
    pub(crate) fn new(
        client: &'a Client,
        ep: &'a Endpoint,
        scopes: &'a [String],
        dry_run: bool,
        events: &'a dyn crate::TransferSink,
    ) -> Session<'a> {
        Session { client, ep, scopes, dry_run, events }
    }
}
