//! The one error type of this crate.

use std::path::PathBuf;

use strata_store::StoreError;
use strata_types::Digest;

/// Everything that can go wrong talking to a registry, each naming the registry, repository,
/// digest or file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry could not be reached at all (DNS, connection refused, TLS, timeout).
    #[error("cannot reach registry {registry} ({url}) after {attempts} attempt(s)")]
    Unreachable {
        /// `host[:port]` as written in the reference.
        registry: String,
        /// The URL requested.
        url: String,
        /// How many times it was tried.
        attempts: u32,
        /// The transport error of the last attempt.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The TLS handshake failed: an untrusted or invalid certificate, or a server that does not
    /// speak TLS. Not retried.
    #[error(
        "TLS with registry {registry} ({url}) failed; if it uses a private CA, trust it \
        (SSL_CERT_FILE or Client::with_ca_file); if it serves plain HTTP, list it as insecure"
    )]
    Tls {
        /// `host[:port]`.
        registry: String,
        /// The URL requested.
        url: String,
        /// The TLS error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// A transfer broke in the middle (connection reset, read timeout) and retries ran out.
    #[error("{method} {url} on registry {registry} failed after {attempts} attempt(s)")]
    Transport {
        /// `host[:port]`.
        registry: String,
        /// HTTP method.
        method: String,
        /// The URL requested.
        url: String,
        /// How many times it was tried.
        attempts: u32,
        /// The last error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// No byte moved for the client's stall timeout ([`ClientOptions::stall_timeout`],
    /// `--timeout`): the registry accepted the request but stopped answering, sending or
    /// reading. Not retried, so a stalled registry costs that long and no more.
    ///
    /// [`ClientOptions::stall_timeout`]: crate::ClientOptions::stall_timeout
    #[error("registry {registry}: {method} {} stalled: no data for {}", url_path(url),
        seconds_text(*timeout))]
    Stalled {
        /// `host[:port]`.
        registry: String,
        /// HTTP method.
        method: String,
        /// The URL requested.
        url: String,
        /// How long nothing moved.
        timeout: std::time::Duration,
    },
    /// Reading a response body failed mid-stream and retries ran out.
    #[error("reading {what} from registry {registry}, repository {repository} failed")]
    BodyRead {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
        /// What was being read (e.g. a blob digest).
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// 401: the registry wants (other) credentials.
    #[error("registry {registry} refused access to repository {repository} (401 Unauthorized; {})",
        sent_text(*.credentials_sent))]
    Unauthorized {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
        /// Whether credentials (Basic or a token obtained with them) were sent.
        credentials_sent: bool,
    },
    /// 403: authenticated, but not allowed.
    #[error("registry {registry} denied access to repository {repository} (403 Forbidden; {})",
        sent_text(*.credentials_sent))]
    Denied {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
        /// Whether credentials were sent.
        credentials_sent: bool,
    },
    /// The token service (Bearer auth realm) failed or answered nonsense.
    #[error("token request to {realm} for registry {registry} failed: {reason}")]
    Token {
        /// `host[:port]` of the registry.
        registry: String,
        /// The realm URL from the challenge.
        realm: String,
        /// What went wrong (status or parse error).
        reason: String,
    },
    /// A `WWW-Authenticate` header this client cannot use.
    #[error("registry {registry} sent an unusable WWW-Authenticate challenge {challenge:?}")]
    InvalidChallenge {
        /// `host[:port]`.
        registry: String,
        /// The header value.
        challenge: String,
    },
    /// 404 for a manifest.
    #[error("manifest {reference} not found in repository {repository} on registry {registry}")]
    ManifestNotFound {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
        /// Tag or digest asked for.
        reference: String,
    },
    /// 404 for a blob the manifest lists.
    #[error("blob {digest} not found in repository {repository} on registry {registry}")]
    BlobNotFound {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
        /// The blob.
        digest: Digest,
    },
    /// A status the protocol does not allow at this point (after retries for 5xx).
    #[error(
        "{method} {url} on registry {registry}: unexpected status {status}{}",
        body_text(body)
    )]
    UnexpectedStatus {
        /// `host[:port]`.
        registry: String,
        /// HTTP method.
        method: String,
        /// The URL requested.
        url: String,
        /// The status received.
        status: u16,
        /// The start of the response body (registries put an error JSON there).
        body: String,
    },
    /// A manifest larger than this client accepts.
    #[error("manifest {reference} in {registry}/{repository} is larger than {limit} bytes")]
    ManifestTooLarge {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
        /// Tag or digest.
        reference: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// A manifest or index that does not parse.
    #[error("manifest {digest} from {registry}/{repository} is not valid JSON of its type")]
    InvalidManifest {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
        /// The manifest's digest (of the bytes received).
        digest: Digest,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest, config or layer media type this client cannot store.
    #[error("{registry}/{repository}: {digest} has unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
        /// The object with that type.
        digest: Digest,
        /// The media type found.
        media_type: String,
    },
    /// An image index has no manifest for the platform asked for.
    #[error("{registry}/{repository}: the image index has no manifest for {platform} (has: {})",
        available.join(", "))]
    NoMatchingPlatform {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
        /// `os/arch[/variant]` wanted.
        platform: String,
        /// The platforms the index lists.
        available: Vec<String>,
    },
    /// Bytes received do not hash to the digest they were asked for (nothing was stored).
    #[error(
        "{registry}/{repository}: content mismatch for {expected}: received bytes hash to {found}"
    )]
    DigestMismatch {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
        /// The digest asked for.
        expected: Digest,
        /// The digest of what arrived.
        found: Digest,
    },
    /// The registry announced or sent a different length than the descriptor says.
    #[error("{registry}/{repository}: size mismatch for {digest}: expected {expected} bytes, registry {what} {found}")]
    SizeMismatch {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
        /// The blob.
        digest: Digest,
        /// Size from the descriptor.
        expected: u64,
        /// Size announced or sent.
        found: u64,
        /// "announced" (Content-Length) or "sent" (bytes counted).
        what: &'static str,
    },
    /// A `Location` or `Range` header the client cannot follow.
    #[error("registry {registry} sent an invalid {header} header {value:?}")]
    InvalidHeader {
        /// `host[:port]`.
        registry: String,
        /// Header name.
        header: &'static str,
        /// The value received.
        value: String,
    },
    /// A blob upload did not complete after the allowed number of resumptions.
    #[error("upload of {digest} to {registry}/{repository} failed after {attempts} attempt(s)")]
    UploadFailed {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
        /// The blob.
        digest: Digest,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: Box<RegistryError>,
    },
    /// The registry's `Docker-Content-Digest` for a pushed manifest differs from ours.
    #[error("{registry}/{repository}: pushed manifest {expected} but registry reports {found}")]
    PushedDigestMismatch {
        /// `host[:port]`.
        registry: String,
        /// Repository path.
        repository: String,
        /// The digest of the bytes sent.
        expected: Digest,
        /// What the registry says it stored.
        found: String,
    },
    /// A push destination without a tag or digest, or a reference digest the image does not have.
    #[error("invalid destination {reference}: {reason}")]
    InvalidDestination {
        /// The reference as given.
        reference: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A blob absent from the store, which a push was to fetch from where the caller said it
    /// lives (a build's lazy cache layer), could not be fetched.
    #[error("blob {digest} is not in the store and could not be fetched: {why}")]
    SourceFetch {
        /// The blob.
        digest: Digest,
        /// Why, one line.
        why: String,
    },
    /// A build-cache reference names a manifest that is not a strata cache artifact.
    #[error("{reference} is not a strata build cache (artifact type {found:?})")]
    NotACache {
        /// The cache reference.
        reference: String,
        /// Its artifactType, else its config media type, when the manifest had them.
        found: Option<String>,
    },
    /// The local store failed (missing blob, I/O, or a verification failure it detected).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A credentials file could not be read or written.
    #[error("credentials file {path}")]
    CredentialsIo {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A credentials file is not valid JSON of the docker `config.json` shape.
    #[error("credentials file {path} is not valid")]
    CredentialsParse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// An `auths` entry whose `auth` is not base64 of `user:password`.
    #[error("credentials file {path}: entry for {registry} has an invalid \"auth\" value")]
    InvalidAuthEntry {
        /// The file.
        path: PathBuf,
        /// The registry key.
        registry: String,
    },
    /// A `docker-credential-*` helper failed.
    #[error("credential helper {helper} for {registry} failed: {reason}")]
    CredentialHelper {
        /// The helper program.
        helper: String,
        /// The registry asked about.
        registry: String,
        /// Exit status / stderr / parse error.
        reason: String,
    },
    /// No credentials file location could be determined (no $HOME and no override).
    #[error("no credentials file: set $REGISTRY_AUTH_FILE, $DOCKER_CONFIG or $HOME")]
    NoCredentialsFile,
    /// The TLS root certificate bundle could not be read.
    #[error("TLS root certificates in {path}")]
    RootCertificates {
        /// The bundle file.
        path: PathBuf,
        /// The error.
        #[source]
        source: Box<ureq::Error>,
    },
}

fn sent_text(sent: bool) -> &'static str {
    if sent {
        "credentials were sent"
    } else {
        "no credentials were sent; log in first"
    }
}

fn body_text(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// `https://host/v2/app/blobs/x?y` -> `/v2/app/blobs/x?y` (the registry is named apart).
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// `30 s`, `1.5 s`.
pub(crate) fn seconds_text(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}
