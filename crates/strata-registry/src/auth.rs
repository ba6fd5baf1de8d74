//! Authentication: challenges, credentials and Bearer tokens.
//!
//! A registry says how it wants to be authenticated in the `WWW-Authenticate` header of a 401
//! (RFC 7235; the Docker token specification, "docs/spec/auth/token.md" in distribution). The
//! cache remembers the challenge per registry, so after the first 401 every request carries the
//! right header up front: `Basic` with the stored credentials, or a `Bearer` token obtained from
//! the challenge's `realm` with `service` and one `scope` parameter per scope the operation needs
//! (`repository:app:pull`, `repository:app:pull,push`, plus `repository:other:pull` to mount from
//! `other`). Tokens are cached per scope set until `expires_in` (default 60 s, as the spec says)
//! runs out, and dropped when the registry answers 401 to one, so an expired token is fetched
//! again once.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use ureq::http::Response;
use ureq::tls::RootCerts;
use ureq::Body;

use crate::client::{body_excerpt, Client, Endpoint};
use crate::credentials::Credential;
use crate::error::RegistryError;

/// A challenge from `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

#[derive(Debug, Clone)]
struct Token {
    value: String,
    expires: Instant,
    with_credentials: bool,
}

#[derive(Default)]
struct HostState {
    /// `None` until looked up.
    credential: Option<Option<Credential>>,
    challenge: Option<Challenge>,
    tokens: HashMap<String, Token>,
    sent_credentials: bool,
    /// `/v2/` was asked once, so the challenge (or its absence) is known.
    probed: bool,
}

/// The `Authorization` header for one request.
pub(crate) struct AuthHeader {
    pub value: String,
    pub with_credentials: bool,
}

/// Per-registry challenges, credentials and tokens, shared by all threads of a [`Client`].
pub(crate) struct AuthCache {
    pub roots: RootCerts,
    hosts: Mutex<HashMap<String, HostState>>,
    fetching: Mutex<()>,
}

impl AuthCache {
    pub fn new(roots: RootCerts) -> AuthCache {
        AuthCache { roots, hosts: Mutex::new(HashMap::new()), fetching: Mutex::new(()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, HostState>> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn cached_credential(&self, registry: &str) -> Option<Option<Credential>> {
        self.lock().get(registry).and_then(|h| h.credential.clone())
    }

    pub fn set_credential(&self, registry: &str, credential: Option<Credential>) {
        let mut hosts = self.lock();
        let host = hosts.entry(registry.to_owned()).or_default();
        host.credential = Some(credential);
        host.tokens.clear();
    }

    /// Forgets everything about `registry` (after `check_login`).
    pub fn forget(&self, registry: &str) {
        self.lock().remove(registry);
    }

    /// Whether `/v2/` was asked already (see [`Client::prepare`]).
    pub fn probed(&self, registry: &str) -> bool {
        self.lock().get(registry).is_some_and(|h| h.probed)
    }

    pub fn mark_probed(&self, registry: &str) {
        self.lock().entry(registry.to_owned()).or_default().probed = true;
    }

    /// Whether the last request to `registry` carried credentials.
    pub fn credentials_sent(&self, registry: &str) -> bool {
        self.lock().get(registry).is_some_and(|h| h.sent_credentials)
    }

    /// The header to send for `scopes`, fetching a token if the registry wants one.
    pub fn header(
        &self,
        client: &Client,
        ep: &Endpoint,
        scopes: &[String],
    ) -> Result<Option<AuthHeader>, RegistryError> {
        let key = scopes.join(" ");
        if let Some(cached) = self.cached_token(&ep.registry, &key) {
            return Ok(Some(cached));
        }
        let challenge = {
            let hosts = self.lock();
            let Some(challenge) = hosts.get(&ep.registry).and_then(|h| h.challenge.clone()) else {
                return Ok(None);
            };
            challenge
        };
        let credential = client.credential(&ep.registry)?;
        let header = match challenge {
            Challenge::Basic => credential.map(|c| AuthHeader {
                value: format!("Basic {}", basic(&c)),
                with_credentials: true,
            }),
            Challenge::Bearer { realm, service, scope } => {
                // One token fetch at a time, so parallel blob transfers that all find the
                // token missing or expired share the first one's result.
                let _fetching = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(cached) = self.cached_token(&ep.registry, &key) {
                    return Ok(Some(cached));
                }
                let mut wanted: Vec<&str> = scopes.iter().map(String::as_str).collect();
                if let Some(extra) = scope.as_deref() {
                    if !wanted.contains(&extra) {
                        wanted.push(extra);
                    }
                }
                let token = fetch_token(
                    client,
                    ep,
                    &realm,
                    service.as_deref(),
                    &wanted,
                    credential.as_ref(),
                )?;
                let value = format!("Bearer {}", token.value);
                let with_credentials = token.with_credentials;
                let mut hosts = self.lock();
                hosts.entry(ep.registry.clone()).or_default().tokens.insert(key, token);
                Some(AuthHeader { value, with_credentials })
            }
        };
        self.note_sent(&ep.registry, header.as_ref().is_some_and(|h| h.with_credentials));
        Ok(header)
    }

    /// A cached, unexpired token for `key` (the joined scopes), as a header.
    fn cached_token(&self, registry: &str, key: &str) -> Option<AuthHeader> {
        let header = {
            let hosts = self.lock();
            let token = hosts.get(registry)?.tokens.get(key)?;
            if token.expires <= Instant::now() {
                return None;
            }
            AuthHeader {
                value: format!("Bearer {}", token.value),
                with_credentials: token.with_credentials,
            }
        };
        self.note_sent(registry, header.with_credentials);
        Some(header)
    }

    fn note_sent(&self, registry: &str, sent: bool) {
        self.lock().entry(registry.to_owned()).or_default().sent_credentials = sent;
    }

    /// Records the challenge of a 401 and drops the token that was refused (`sent`, the
    /// `Authorization` value of the refused request; a newer token another thread fetched
    /// meanwhile stays). Returns whether a retry can do better (there is a challenge we can
    /// answer that we did not answer already).
    pub fn challenged(
        &self,
        client: &Client,
        ep: &Endpoint,
        scopes: &[String],
        resp: &Response<Body>,
        sent: Option<&AuthHeader>,
    ) -> Result<bool, RegistryError> {
        let sent_credentials = sent.is_some_and(|a| a.with_credentials);
        // A registry may offer several challenges (several headers); Bearer is preferred.
        let values: Vec<&str> = resp
            .headers()
            .get_all("WWW-Authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let Some(first) = values.first() else { return Ok(false) };
        let parsed: Vec<Challenge> = values.iter().filter_map(|v| parse_challenge(v)).collect();
        let challenge = parsed
            .iter()
            .find(|c| matches!(c, Challenge::Bearer { .. }))
            .or(parsed.first())
            .cloned()
            .ok_or_else(|| RegistryError::InvalidChallenge {
                registry: ep.registry.clone(),
                challenge: (*first).to_owned(),
            })?;
        {
            let mut hosts = self.lock();
            let host = hosts.entry(ep.registry.clone()).or_default();
            let key = scopes.join(" ");
            let refused = host
                .tokens
                .get(&key)
                .is_some_and(|t| sent.is_some_and(|a| a.value == format!("Bearer {}", t.value)));
            if refused {
                host.tokens.remove(&key);
            }
            host.sent_credentials = sent_credentials;
            host.challenge = Some(challenge.clone());
        }
        match challenge {
            // Basic: only worth retrying if we have credentials and did not send them.
            Challenge::Basic => Ok(!sent_credentials && client.credential(&ep.registry)?.is_some()),
            // Bearer: the first challenge, or an expired or revoked token: fetch a new one (the
            // caller answers one challenge per request, so this cannot loop).
            Challenge::Bearer { .. } => Ok(true),
        }
    }
}

/// `base64(user:password)`.
pub(crate) fn basic(c: &Credential) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password))
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// GET `realm?service=...&scope=...` (token.md "Requesting a Token"), with Basic credentials if
/// we have them.
fn fetch_token(
    client: &Client,
    ep: &Endpoint,
    realm: &str,
    service: Option<&str>,
    scopes: &[&str],
    credential: Option<&Credential>,
) -> Result<Token, RegistryError> {
    let mut query: Vec<String> = Vec::new();
    if let Some(service) = service {
        query.push(format!("service={}", encode_query(service)));
    }
    for scope in scopes {
        query.push(format!("scope={}", encode_query(scope)));
    }
    let sep = if realm.contains('?') { '&' } else { '?' };
    let url = if query.is_empty() {
        realm.to_owned()
    } else {
        format!("{realm}{sep}{}", query.join("&"))
    };
    let token_error = |reason: String| RegistryError::Token {
        registry: ep.registry.clone(),
        realm: realm.to_owned(),
        reason,
    };
    // An identity (refresh) token is exchanged by POSTing a form to the realm (distribution
    // docs/spec/auth/oauth.md); user and password go as Basic on a GET (token.md).
    let refresh = credential.filter(|c| c.is_identity_token()).map(|c| {
        let mut form = vec![
            "grant_type=refresh_token".to_owned(),
            "client_id=strata".to_owned(),
            format!("refresh_token={}", encode_query(&c.password)),
        ];
        if let Some(service) = service {
            form.push(format!("service={}", encode_query(service)));
        }
        form.push(format!("scope={}", encode_query(&scopes.join(" "))));
        form.join("&")
    });
    let mut attempt = 0;
    let resp = loop {
        attempt += 1;
        let request = match (&refresh, credential) {
            (Some(form), _) => ureq::http::Request::builder()
                .method("POST")
                .uri(realm)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form.as_bytes()),
            (None, Some(c)) => ureq::http::Request::builder()
                .method("GET")
                .uri(url.as_str())
                .header("Authorization", format!("Basic {}", basic(c)))
                .body(&[][..]),
            (None, None) => {
                ureq::http::Request::builder().method("GET").uri(url.as_str()).body(&[][..])
            }
        }
        .map_err(|e| token_error(e.to_string()))?;
        match client.agent_for(ep).run(request) {
            Ok(resp)
                if crate::client::is_retryable_status(resp.status().as_u16())
                    && attempt <= client.retries() =>
            {
                client.pause(attempt);
            }
            Ok(resp) => break resp,
            Err(e) if crate::client::is_stall(&e) => {
                let (method, url) =
                    if refresh.is_some() { ("POST", realm) } else { ("GET", &*url) };
                return Err(client.stalled(ep, method, url));
            }
            Err(_) if attempt <= client.retries() => client.pause(attempt),
            Err(e) => return Err(token_error(e.to_string())),
        }
    };
    match resp.status().as_u16() {
        200 => {}
        401 | 403 => {
            return Err(RegistryError::Unauthorized {
                registry: ep.registry.clone(),
                repository: ep.repository.clone(),
                credentials_sent: credential.is_some(),
            })
        }
        status => {
            return Err(token_error(format!("status {status}: {}", body_excerpt(resp))));
        }
    }
    let parsed: TokenResponse = resp
        .into_body()
        .with_config()
        .limit(1 << 20)
        .read_json()
        .map_err(|e| token_error(format!("unreadable token response: {e}")))?;
    let value = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| token_error("no token in the response".to_owned()))?;
    // token.md: expires_in defaults to 60 s. Refresh a little early.
    let lifetime = parsed.expires_in.unwrap_or(60).max(1);
    let margin = if lifetime > 20 { 10 } else { 0 };
    Ok(Token {
        value,
        expires: Instant::now() + Duration::from_secs(lifetime - margin),
        with_credentials: credential.is_some(),
    })
}

/// Percent-encodes a query value (unreserved characters and `:/,` stay).
fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses `Basic realm="x"` or `Bearer realm="...",service="...",scope="..."`.
pub(crate) fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let params = parse_params(rest)?;
    let get = |k: &str| {
        params.iter().find(|(name, _)| name.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        None
    }
}

/// `k=v, k="quoted, \"value\""` -> pairs.
fn parse_params(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            // Not a parameter: the start of another challenge in the same header
            // (`Bearer realm="a", Basic realm="b"`); keep what belongs to the first.
            return Some(out);
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(parse_challenge("Basic realm=\"Registry Realm\""), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",\
                 scope=\"repository:library/alpine:pull,push\""
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge("bearer realm=http://x/t"),
            Some(Challenge::Bearer { realm: "http://x/t".into(), service: None, scope: None })
        );
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(
            parse_challenge("Bearer realm=\"https://a/t\", service=\"s\", Basic realm=\"b\""),
            Some(Challenge::Bearer {
                realm: "https://a/t".into(),
                service: Some("s".into()),
                scope: None
            })
        );
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer realm=\"unterminated"), None);
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query("repository:a/b:pull,push"), "repository:a/b:pull,push");
        assert_eq!(encode_query("a b&c"), "a%20b%26c");
    }
}
