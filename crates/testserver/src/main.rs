//! skiff-testserver: the program inside the `testserver:latest` test image.
//!
//! A deliberately small HTTP/1.1 server (std only, one thread per
//! connection, `Connection: close`) whose endpoints let integration tests
//! drive a workload's behaviour from outside:
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | hostname and the request (method, path, peer, headers) |
//! | `GET /echo/...` | the same, under any path (for path routing tests) |
//! | `GET /healthz` | 200 `ok`, or 500 after `POST /fail-health` until `POST /heal` |
//! | `POST /crash` | answers, then exits with code 1 |
//! | `POST /alloc?mb=N` | allocates and touches N MiB, and keeps it |
//! | `GET /env` | the environment, `KEY=VALUE` per line |
//! | `GET /file?path=P` | the contents of file P |
//!
//! It listens on `0.0.0.0:$PORT` (default 8080) and exits 0 on SIGTERM or
//! SIGINT: as a container's PID 1 it would otherwise ignore SIGTERM and
//! make every stop wait out the grace period. Before exiting it finishes
//! the requests it is answering (for at most [`DRAIN`]) and turns new ones
//! away unanswered, as a well-behaved server stops: a request cut halfway
//! through its answer could not be retried by anyone.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Set by `POST /fail-health`, cleared by `POST /heal`.
static UNHEALTHY: AtomicBool = AtomicBool::new(false);
/// Memory taken by `POST /alloc`, held until the process exits.
static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

const MIB: usize = 1 << 20;
/// Requests larger than this are refused: the server only needs small ones.
const MAX_HEAD: usize = 64 * 1024;

struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    peer: String,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
    /// Exit with this code once the answer is sent (`POST /crash`).
    exit_after: Option<i32>,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self { status, body: body.into().into_bytes(), exit_after: None }
    }
}

fn main() {
    let port = std::env::var("PORT").ok().and_then(|p| p.parse::<u16>().ok()).unwrap_or(8080);
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skiff-testserver: listening on port {port}: {e}");
            std::process::exit(2);
        }
    };
    exit_on_signals();
    eprintln!("skiff-testserver: listening on 0.0.0.0:{port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || handle(stream));
    }
}

/// How long a stop waits for the requests being answered.
const DRAIN: Duration = Duration::from_millis(800);
/// Connections being answered now.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Set once a stop signal came: new connections are closed unanswered.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// A thread that waits for SIGTERM/SIGINT, lets the answers under way
/// finish, and exits cleanly.
fn exit_on_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    eprintln!("skiff-testserver: signal {sig}, finishing the requests under way");
                    STOPPING.store(true, Ordering::SeqCst);
                    let deadline = std::time::Instant::now() + DRAIN;
                    while IN_FLIGHT.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    std::process::exit(0);
                }
            });
        }
        Err(e) => eprintln!("skiff-testserver: cannot handle signals: {e}"),
    }
}

/// Counts a connection in [`IN_FLIGHT`] until it is answered.
struct Answering;

impl Answering {
    /// None once stopping: the connection is then closed unanswered.
    fn begin() -> Option<Self> {
        // Counted before the check, so a stop that sees none in flight
        // also makes every later connection see STOPPING.
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        let answering = Answering;
        (!STOPPING.load(Ordering::SeqCst)).then_some(answering)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

fn handle(stream: TcpStream) {
    let Some(_answering) = Answering::begin() else { return };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let response = match read_request(&mut reader, peer) {
        Ok(req) => route(&req),
        Err(msg) => Response::text(400, format!("{msg}\n")),
    };
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    let mut answer = head.into_bytes();
    answer.extend_from_slice(&response.body);
    let _ = stream.write_all(&answer);
    let _ = stream.flush();
    if let Some(code) = response.exit_after {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        eprintln!("skiff-testserver: exiting with code {code} as asked");
        std::process::exit(code);
    }
}

fn read_request(reader: &mut BufReader<TcpStream>, peer: String) -> Result<Request, String> {
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| format!("reading request line: {e}"))?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err("malformed request line".into());
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    let mut total = line.len();
    loop {
        let mut h = String::new();
        let n = reader.read_line(&mut h).map_err(|e| format!("reading headers: {e}"))?;
        total += n;
        if n == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if total > MAX_HEAD {
            return Err("request head too large".into());
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    // Drain a body so the client never sees a reset before our answer.
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(0);
    let _ = std::io::copy(&mut reader.take(length.min(MAX_HEAD as u64)), &mut std::io::sink());
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect(),
        headers,
        peer,
    })
}

fn route(req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/") => echo(req),
        ("GET", p) if p.starts_with("/echo/") => echo(req),
        ("GET", "/healthz") if UNHEALTHY.load(Ordering::SeqCst) => Response::text(500, "unhealthy\n"),
        ("GET", "/healthz") => Response::text(200, "ok\n"),
        ("POST", "/fail-health") => {
            UNHEALTHY.store(true, Ordering::SeqCst);
            Response::text(200, "health now fails\n")
        }
        ("POST", "/heal") => {
            UNHEALTHY.store(false, Ordering::SeqCst);
            Response::text(200, "health now ok\n")
        }
        ("POST", "/crash") => Response { exit_after: Some(1), ..Response::text(200, "crashing\n") },
        ("POST", "/alloc") => alloc(req),
        ("GET", "/env") => {
            let body: String = std::env::vars().map(|(k, v)| format!("{k}={v}\n")).collect();
            Response::text(200, body)
        }
        ("GET", "/file") => match req.param("path") {
            None => Response::text(400, "missing ?path=\n"),
            Some(p) => match std::fs::read(p) {
                Ok(body) => Response { status: 200, body, exit_after: None },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Response::text(404, format!("{p}: {e}\n")),
                Err(e) => Response::text(500, format!("{p}: {e}\n")),
            },
        },
        (_, "/" | "/healthz" | "/fail-health" | "/heal" | "/crash" | "/alloc" | "/env" | "/file") => {
            Response::text(405, "method not allowed\n")
        }
        _ => Response::text(404, "not found\n"),
    }
}

fn echo(req: &Request) -> Response {
    let mut body =
        format!("hostname: {}\nmethod: {}\npath: {}\npeer: {}\n", hostname(), req.method, req.path, req.peer);
    for (k, v) in &req.query {
        body.push_str(&format!("query: {k}={v}\n"));
    }
    for (k, v) in &req.headers {
        body.push_str(&format!("header: {k}: {v}\n"));
    }
    Response::text(200, body)
}

fn alloc(req: &Request) -> Response {
    let Some(mb) = req.param("mb").and_then(|m| m.parse::<usize>().ok()) else {
        return Response::text(400, "want ?mb=N\n");
    };
    let Some(bytes) = mb.checked_mul(MIB) else {
        return Response::text(400, "too large\n");
    };
    let mut block = Vec::new();
    if block.try_reserve_exact(bytes).is_err() {
        return Response::text(500, format!("could not allocate {mb} MiB\n"));
    }
    // Touch every page so the memory is resident, not just reserved.
    block.resize(bytes, 1u8);
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.push(block);
    let total: usize = held.iter().map(Vec::len).sum::<usize>() / MIB;
    Response::text(200, format!("allocated {mb} MiB, holding {total} MiB\n"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    }
}
