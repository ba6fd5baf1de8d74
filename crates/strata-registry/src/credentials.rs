//! Registry credentials in the Docker / podman `config.json` format.
//!
//! The file is a JSON object whose `auths` maps a registry (`host[:port]`, or a URL such as
//! `https://index.docker.io/v1/`) to `{"auth": base64("user:password")}`; `credHelpers` maps a
//! registry to a helper name and `credsStore` names a default helper. A helper is the program
//! `docker-credential-NAME`: `get` reads the server on stdin and prints
//! `{"ServerURL":..,"Username":..,"Secret":..}`. Files are searched in the order podman and
//! skopeo use: `$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`
//! (an explicit file replaces the search). For a registry, a `credHelpers` entry wins over an
//! `auths` entry, which wins over `credsStore`, as in Docker. An `identitytoken` in an entry (or
//! a helper answering with user `<token>`) is an OAuth2 refresh token, exchanged at the
//! registry's token service. [`login`] and [`logout`] edit `auths` only, keeping every other
//! key of the file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::error::RegistryError;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

/// The user name Docker records for an identity (OAuth2 refresh) token; the token is then the
/// password.
pub const IDENTITY_TOKEN_USER: &str = "<token>";

impl Credential {
    /// Whether this is an identity token (`username` is [`IDENTITY_TOKEN_USER`]): exchanged at
    /// the token service for access tokens instead of being sent as a password.
    pub fn is_identity_token(&self) -> bool {
        self.username == IDENTITY_TOKEN_USER
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("username", &self.username).finish_non_exhaustive()
    }
}

/// The file [`login`] writes when none is given: `$REGISTRY_AUTH_FILE`, else
/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_file() -> Result<PathBuf, RegistryError> {
    search_path().into_iter().next().ok_or(RegistryError::NoCredentialsFile)
}

fn search_path() -> Vec<PathBuf> {
    search_path_from(|name| std::env::var_os(name))
}

/// The search order, with the environment given as a function (testable without touching the
/// process environment).
fn search_path_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Vec<PathBuf> {
    let var = |name| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut out = Vec::new();
    if let Some(p) = var("REGISTRY_AUTH_FILE") {
        out.push(p);
    }
    if let Some(p) = var("DOCKER_CONFIG") {
        out.push(p.join("config.json"));
    }
    if let Some(home) = var("HOME") {
        out.push(home.join(".docker/config.json"));
    }
    out
}

/// Finds the credential for `registry` (`host[:port]`) in `file`, or in the default search when
/// `None`. `Ok(None)` when no file mentions the registry (anonymous access).
pub fn find(registry: &str, file: Option<&Path>) -> Result<Option<Credential>, RegistryError> {
    let files = match file {
        Some(f) => vec![f.to_owned()],
        None => search_path(),
    };
    for path in files {
        let Some(config) = read_config(&path)? else { continue };
        if let Some(helper) = config
            .get("credHelpers")
            .and_then(Value::as_object)
            .and_then(|helpers| lookup(helpers, registry))
            .and_then(Value::as_str)
        {
            return run_helper(&format!("docker-credential-{helper}"), registry);
        }
        if let Some(entry) =
            config.get("auths").and_then(Value::as_object).and_then(|a| lookup(a, registry))
        {
            if let Some(c) = decode_entry(entry, &path, registry)? {
                return Ok(Some(c));
            }
        }
        if let Some(store) = config.get("credsStore").and_then(Value::as_str) {
            if let Some(c) = run_helper(&format!("docker-credential-{store}"), registry)? {
                return Ok(Some(c));
            }
        }
    }
    Ok(None)
}

/// Saves `username:password` for `registry` into the auth file (`file`, else
/// [`default_file`]) as an `auths` entry, creating the file (mode 0600) if needed; returns the
/// file written.
pub fn login(
    registry: &str,
    username: &str,
    password: &str,
    file: Option<&Path>,
) -> Result<PathBuf, RegistryError> {
    let path = match file {
        Some(f) => f.to_owned(),
        None => default_file()?,
    };
    let mut config = read_config(&path)?.unwrap_or_default();
    let auths = config.entry("auths").or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    if let Value::Object(auths) = auths {
        auths.retain(|k, _| normalize(k) != normalize(registry));
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        let mut entry = Map::new();
        entry.insert("auth".to_owned(), Value::String(auth));
        auths.insert(file_key(registry), Value::Object(entry));
    }
    write_config(&path, &config)?;
    Ok(path)
}

/// Removes the `auths` entry for `registry` (under any of its spellings); `Ok(false)` when there
/// was none.
pub fn logout(registry: &str, file: Option<&Path>) -> Result<bool, RegistryError> {
    let path = match file {
        Some(f) => f.to_owned(),
        None => default_file()?,
    };
    let Some(mut config) = read_config(&path)? else { return Ok(false) };
    let mut removed = false;
    if let Some(Value::Object(auths)) = config.get_mut("auths") {
        let before = auths.len();
        auths.retain(|k, _| normalize(k) != normalize(registry));
        removed = auths.len() != before;
    }
    if removed {
        write_config(&path, &config)?;
    }
    Ok(removed)
}

/// The key Docker writes for a registry (`https://index.docker.io/v1/` for Docker Hub).
fn file_key(registry: &str) -> String {
    if normalize(registry) == "docker.io" {
        "https://index.docker.io/v1/".to_owned()
    } else {
        registry.to_owned()
    }
}

/// `https://host:port/v1/` -> `host:port`; Docker Hub aliases -> `docker.io`.
fn normalize(key: &str) -> String {
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_owned(),
        h => h.to_owned(),
    }
}

fn lookup<'m>(map: &'m Map<String, Value>, registry: &str) -> Option<&'m Value> {
    let want = normalize(registry);
    map.get(registry).or_else(|| map.iter().find(|(k, _)| normalize(k) == want).map(|(_, v)| v))
}

fn decode_entry(
    entry: &Value,
    path: &Path,
    registry: &str,
) -> Result<Option<Credential>, RegistryError> {
    let invalid =
        || RegistryError::InvalidAuthEntry { path: path.to_owned(), registry: registry.to_owned() };
    if let Some(token) =
        entry.get("identitytoken").and_then(Value::as_str).filter(|t| !t.is_empty())
    {
        return Ok(Some(Credential {
            username: IDENTITY_TOKEN_USER.to_owned(),
            password: token.to_owned(),
        }));
    }
    let Some(auth) = entry.get("auth").and_then(Value::as_str).filter(|a| !a.is_empty()) else {
        // Some tools write username/password fields instead.
        let user = entry.get("username").and_then(Value::as_str);
        let pass = entry.get("password").and_then(Value::as_str);
        return Ok(user
            .zip(pass)
            .map(|(u, p)| Credential { username: u.to_owned(), password: p.to_owned() }));
    };
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (username, password) = text.split_once(':').ok_or_else(invalid)?;
    Ok(Some(Credential { username: username.to_owned(), password: password.to_owned() }))
}

fn read_config(path: &Path) -> Result<Option<Map<String, Value>>, RegistryError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RegistryError::CredentialsIo { path: path.to_owned(), source }),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Map::new()));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| RegistryError::CredentialsParse { path: path.to_owned(), source })
}

/// Writes the file atomically (temp file beside it, mode 0600, rename).
fn write_config(path: &Path, config: &Map<String, Value>) -> Result<(), RegistryError> {
    let io_err = |source| RegistryError::CredentialsIo { path: path.to_owned(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_err)?;
    }
    let mut bytes = serde_json::to_vec_pretty(config)
        .map_err(|source| RegistryError::CredentialsParse { path: path.to_owned(), source })?;
    bytes.push(b'\n');
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// Runs `program get` with the server on stdin (docker-credential-helpers protocol).
/// `Ok(None)` when the helper says it has no credentials for the server.
pub(crate) fn run_helper(
    program: &str,
    registry: &str,
) -> Result<Option<Credential>, RegistryError> {
    let fail = |reason: String| RegistryError::CredentialHelper {
        helper: program.to_owned(),
        registry: registry.to_owned(),
        reason,
    };
    let server = file_key(registry);
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(server.as_bytes()).map_err(|e| fail(format!("writing stdin: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(fail(format!("{}: {}{}", out.status, stdout.trim(), stderr.trim())));
    }
    let value: Value =
        serde_json::from_str(&stdout).map_err(|e| fail(format!("unreadable output: {e}")))?;
    let username = value.get("Username").and_then(Value::as_str).unwrap_or_default();
    let secret = value.get("Secret").and_then(Value::as_str).unwrap_or_default();
    if secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credential { username: username.to_owned(), password: secret.to_owned() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_searched_in_podman_then_docker_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter().find(|(k, _)| *k == name).map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        const ALL: &[(&str, &str)] =
            &[("REGISTRY_AUTH_FILE", "/a/auth.json"), ("DOCKER_CONFIG", "/d"), ("HOME", "/h")];
        assert_eq!(
            search_path_from(env(ALL)),
            [
                PathBuf::from("/a/auth.json"),
                PathBuf::from("/d/config.json"),
                PathBuf::from("/h/.docker/config.json")
            ]
        );
        assert_eq!(
            search_path_from(env(&[("REGISTRY_AUTH_FILE", ""), ("HOME", "/h")])),
            [PathBuf::from("/h/.docker/config.json")]
        );
        assert!(search_path_from(env(&[])).is_empty());
    }

    #[test]
    fn login_find_logout_round_trip_keeps_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/config.json");
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, r#"{"auths":{"other:1":{"auth":"eDp5"}},"psFormat":"x"}"#).unwrap();
        assert_eq!(login("127.0.0.1:5000", "bob", "p:w", Some(&file)).unwrap(), file);
        let got = find("127.0.0.1:5000", Some(&file)).unwrap().unwrap();
        assert_eq!((got.username.as_str(), got.password.as_str()), ("bob", "p:w"));
        let other = find("other:1", Some(&file)).unwrap().unwrap();
        assert_eq!((other.username.as_str(), other.password.as_str()), ("x", "y"));
        let text = fs::read_to_string(&file).unwrap();
        assert!(text.contains("psFormat"), "{text}");
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(logout("127.0.0.1:5000", Some(&file)).unwrap());
        assert!(!logout("127.0.0.1:5000", Some(&file)).unwrap());
        assert_eq!(find("127.0.0.1:5000", Some(&file)).unwrap(), None);
        assert!(find("other:1", Some(&file)).unwrap().is_some());
    }

    #[test]
    fn docker_hub_and_url_keys_match() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        fs::write(
            &file,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"https://reg.lan:5000":{"auth":"YTpi"}}}"#,
        )
        .unwrap();
        assert_eq!(find("docker.io", Some(&file)).unwrap().unwrap().username, "u");
        assert_eq!(find("reg.lan:5000", Some(&file)).unwrap().unwrap().password, "b");
        assert_eq!(find("reg.lan", Some(&file)).unwrap(), None);
    }

    #[test]
    fn bad_entries_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        fs::write(&file, r#"{"auths":{"r:1":{"auth":"!!!"}}}"#).unwrap();
        let err = find("r:1", Some(&file)).unwrap_err();
        assert!(matches!(err, RegistryError::InvalidAuthEntry { .. }), "{err}");
        fs::write(&file, "{not json").unwrap();
        let err = find("r:1", Some(&file)).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
        assert_eq!(find("r:1", Some(&dir.path().join("missing.json"))).unwrap(), None);
    }

    #[test]
    fn cred_helpers_win_over_auths_which_win_over_creds_store() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        // Helpers that do not exist: which one was tried shows in the error.
        fs::write(
            &file,
            r#"{"auths":{"r:1":{"auth":"dTpw"},"r:2":{"auth":"dTpw"}},
                "credHelpers":{"r:1":"strata-test-absent-a"},
                "credsStore":"strata-test-absent-b"}"#,
        )
        .unwrap();
        let err = find("r:1", Some(&file)).unwrap_err();
        assert!(err.to_string().contains("docker-credential-strata-test-absent-a"), "{err}");
        assert_eq!(find("r:2", Some(&file)).unwrap().unwrap().username, "u");
        let err = find("r:3", Some(&file)).unwrap_err();
        assert!(err.to_string().contains("docker-credential-strata-test-absent-b"), "{err}");
    }

    #[test]
    fn identity_tokens_become_token_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        fs::write(&file, r#"{"auths":{"r:1":{"auth":"","identitytoken":"rt"}}}"#).unwrap();
        let c = find("r:1", Some(&file)).unwrap().unwrap();
        assert!(c.is_identity_token());
        assert_eq!(c.password, "rt");
        assert!(!format!("{c:?}").contains("rt\""), "Debug hides the secret: {c:?}");
    }

    #[test]
    fn helpers_are_asked_with_the_server_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-test");
        fs::write(
            &helper,
            "#!/bin/sh\nread server\nif [ \"$server\" = reg.lan:5000 ]; then\n\
             echo '{\"ServerURL\":\"reg.lan:5000\",\"Username\":\"h\",\"Secret\":\"s3\"}'\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
        )
        .unwrap();
        fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
        let program = helper.to_str().unwrap();
        let got = run_helper(program, "reg.lan:5000").unwrap().unwrap();
        assert_eq!((got.username.as_str(), got.password.as_str()), ("h", "s3"));
        assert_eq!(run_helper(program, "other:1").unwrap(), None);
        let err = run_helper("/nonexistent/docker-credential-x", "r").unwrap_err();
        assert!(err.to_string().contains("docker-credential-x"), "{err}");
    }
}
