//! Stall timeouts against a real hostile server: a tiny HTTP/1.1 server on 127.0.0.1 that
//! serves one image and then misbehaves on its layer blob, or on everything. A stall must cost
//! one stall timeout (not one per attempt), name the registry, the request and the time, leave
//! the store consistent, and a slow server that keeps sending must never be called stalled.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{make_image, random_bytes, Recorder};
use strata_registry::{
    pull, push, Client, ClientOptions, PullOptions, PushOptions, Reference, RegistryError,
    TransferEvent,
};
use strata_store::{Image, Store};
use strata_types::Digest;

/// The stall timeout of these tests.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How the server misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Accepts, reads the request, never answers.
    Silent,
    /// Serves everything, but the layer blob's body stops half-way (connection kept open).
    HalfThenStall,
    /// Serves everything, the layer blob's body one byte a second.
    Trickle,
    /// Takes pushes: has no blob (HEAD 404), opens upload sessions, and never answers the
    /// `PUT` that completes one.
    UploadStall,
}

/// The server: its `host:port` and how many connections it accepted.
struct Hostile {
    host: String,
    connections: Arc<AtomicUsize>,
}

/// Serves `image` (read from `source`) as `app:v1`, misbehaving as `mode` says.
fn hostile(mode: Mode, source: &Store, image: &Image) -> Hostile {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let manifest_digest = image.digest().unwrap();
    let manifest = source.read_blob(&manifest_digest).unwrap();
    let config = Digest::try_from(image.manifest.config().digest()).unwrap();
    let layer = Digest::try_from(image.manifest.layers()[0].digest()).unwrap();
    let blobs = vec![
        (config, source.read_blob(&config).unwrap()),
        (layer, source.read_blob(&layer).unwrap()),
    ];
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let (manifest, blobs) = (manifest.clone(), blobs.clone());
            std::thread::spawn(move || {
                serve(conn, mode, &manifest, manifest_digest, &blobs, layer);
            });
        }
    });
    Hostile { host, connections }
}

/// One connection, one request (answered with `Connection: close`).
fn serve(
    mut conn: TcpStream,
    mode: Mode,
    manifest: &[u8],
    manifest_digest: Digest,
    blobs: &[(Digest, Vec<u8>)],
    layer: Digest,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
    let hold = || std::thread::sleep(Duration::from_secs(60));
    if mode == Mode::Silent {
        return hold();
    }
    let method = request_line.split(' ').next().unwrap_or_default().to_owned();
    let path = request_line.split(' ').nth(1).unwrap_or_default().to_owned();
    let head = |status: &str, content_type: &str, len: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let mut send = |bytes: &[u8]| {
        let _ = conn.write_all(bytes);
        let _ = conn.flush();
    };
    if mode == Mode::UploadStall && path != "/v2/" {
        match method.as_str() {
            "HEAD" => send(head("404 Not Found", "text/plain", 0).as_bytes()),
            "POST" => {
                let mut h = head("202 Accepted", "text/plain", 0);
                h.insert_str(h.len() - 2, "Location: /v2/app/blobs/uploads/1\r\n");
                send(h.as_bytes());
            }
            _ => hold(),
        }
    } else if path == "/v2/" {
        send(head("200 OK", "application/json", 2).as_bytes());
        send(b"{}");
    } else if path == "/v2/app/manifests/v1" {
        let mut h = head("200 OK", "application/vnd.oci.image.manifest.v1+json", manifest.len());
        h.insert_str(h.len() - 2, &format!("Docker-Content-Digest: {manifest_digest}\r\n"));
        send(h.as_bytes());
        send(manifest);
    } else if let Some((digest, body)) =
        blobs.iter().find(|(d, _)| path == format!("/v2/app/blobs/{d}"))
    {
        send(head("200 OK", "application/octet-stream", body.len()).as_bytes());
        match mode {
            Mode::HalfThenStall if *digest == layer => {
                send(&body[..body.len() / 2]);
                hold();
            }
            Mode::Trickle if *digest == layer => {
                for byte in body {
                    std::thread::sleep(Duration::from_secs(1));
                    send(&[*byte]);
                }
            }
            _ => send(body),
        }
    } else {
        send(head("404 Not Found", "text/plain", 0).as_bytes());
    }
    // Let the client read everything before the socket closes.
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let _ = reader.read_to_end(&mut Vec::new());
}

fn client() -> Client {
    let none = std::env::temp_dir().join("strata-registry-test-no-credentials.json");
    Client::new(ClientOptions {
        auth_file: Some(none),
        stall_timeout: Some(TIMEOUT),
        ..Default::default()
    })
    .unwrap()
    .with_backoff(Duration::from_millis(1))
}

/// A source store with a one-layer image whose layer is `layer`.
fn image_with_layer(dir: &std::path::Path, layer: Vec<u8>) -> (Store, Image) {
    let source = Store::init(dir.join("source")).unwrap();
    let image = make_image(&source, &[layer], "x");
    (source, image)
}

/// Nothing tagged, and fsck finds nothing wrong.
fn assert_consistent(store: &Store) {
    assert!(store.tags().unwrap().is_empty(), "{:?}", store.tags());
    assert!(store.fsck(false).unwrap().is_clean());
}

/// The loose upper bound of a stall: three timeouts and slack for a loaded machine.
fn bounded(elapsed: Duration) {
    assert!(elapsed >= TIMEOUT, "declared stalled before the timeout: {elapsed:?}");
    assert!(elapsed < TIMEOUT * 3 + Duration::from_secs(2), "took {elapsed:?}");
}

#[test]
fn a_registry_that_accepts_and_never_answers_fails_once_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (source, image) = image_with_layer(dir.path(), random_bytes(1, 4096));
    let server = hostile(Mode::Silent, &source, &image);
    let store = Store::init(dir.path().join("dest")).unwrap();
    let reference: Reference = format!("{}/app:v1", server.host).parse().unwrap();
    let started = Instant::now();
    let err = pull(&client(), &store, &reference, &PullOptions::default(), &Recorder::default())
        .unwrap_err();
    bounded(started.elapsed());
    assert!(matches!(err, RegistryError::Stalled { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("registry {}: GET /v2/ stalled: no data for 2 s", server.host)
    );
    assert_eq!(server.connections.load(Ordering::SeqCst), 1, "a stall is not retried");
    assert_consistent(&store);
}

#[test]
fn a_blob_body_that_stops_half_way_fails_after_the_timeout_and_says_it_stalled() {
    let dir = tempfile::tempdir().unwrap();
    let (source, image) = image_with_layer(dir.path(), random_bytes(2, 256 * 1024));
    let layer = Digest::try_from(image.manifest.layers()[0].digest()).unwrap();
    let server = hostile(Mode::HalfThenStall, &source, &image);
    let store = Store::init(dir.path().join("dest")).unwrap();
    let reference: Reference = format!("{}/app:v1", server.host).parse().unwrap();
    let events = Recorder::default();
    let options = PullOptions { jobs: 1, ..Default::default() };
    let started = Instant::now();
    let err = pull(&client(), &store, &reference, &options, &events).unwrap_err();
    bounded(started.elapsed());
    let text = err.to_string();
    assert!(matches!(err, RegistryError::Stalled { .. }), "{err:?}");
    assert_eq!(
        text,
        format!("registry {}: GET /v2/app/blobs/{layer} stalled: no data for 2 s", server.host)
    );
    // manifest, /v2/, the config and one layer GET: the stalled body was not retried.
    assert_eq!(server.connections.load(Ordering::SeqCst), 4);
    let stalls: Vec<u64> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            TransferEvent::Stalled { digest, seconds } if *digest == layer => Some(*seconds),
            _ => None,
        })
        .collect();
    assert!(!stalls.is_empty() && stalls[0] >= 1, "no stall notice: {stalls:?}");
    assert!(!store.has_blob(&layer), "half a blob must not be stored");
    assert_consistent(&store);
}

#[test]
fn a_body_trickling_a_byte_a_second_is_progress_not_a_stall() {
    let dir = tempfile::tempdir().unwrap();
    let (source, image) = image_with_layer(dir.path(), b"slow".to_vec());
    let layer = Digest::try_from(image.manifest.layers()[0].digest()).unwrap();
    let server = hostile(Mode::Trickle, &source, &image);
    let store = Store::init(dir.path().join("dest")).unwrap();
    let reference: Reference = format!("{}/app:v1", server.host).parse().unwrap();
    let started = Instant::now();
    let pulled =
        pull(&client(), &store, &reference, &PullOptions::default(), &Recorder::default()).unwrap();
    // Four bytes a second apart: longer than the timeout in all, never silent that long.
    assert!(started.elapsed() >= Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(pulled.report.downloaded, 2);
    assert_eq!(store.read_blob(&layer).unwrap(), b"slow");
    assert!(store.fsck(false).unwrap().is_clean());
}

#[test]
fn an_upload_the_registry_never_acknowledges_fails_after_the_timeout_without_a_second_wait() {
    let dir = tempfile::tempdir().unwrap();
    let (source, image) = image_with_layer(dir.path(), random_bytes(3, 8192));
    let config = Digest::try_from(image.manifest.config().digest()).unwrap();
    let server = hostile(Mode::UploadStall, &source, &image);
    let dest: Reference = format!("{}/app:v1", server.host).parse().unwrap();
    let events = Recorder::default();
    let options = PushOptions { jobs: 1, ..Default::default() };
    let started = Instant::now();
    let err = push(&client(), &source, &image, &dest, &options, &events).unwrap_err();
    bounded(started.elapsed());
    assert!(matches!(err, RegistryError::Stalled { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "registry {}: PUT /v2/app/blobs/uploads/1?digest={config} stalled: no data for 2 s",
            server.host
        )
    );
    // /v2/, HEAD of both blobs (every blob is decided before the first upload), POST, PUT:
    // neither a retry nor a DELETE that would wait again.
    assert_eq!(server.connections.load(Ordering::SeqCst), 5);
    assert!(events
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, TransferEvent::Stalled { digest, .. } if *digest == config)));
}
