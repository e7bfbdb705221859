//! Just enough of SPDY/3.1 to be a client of the CRI streaming server,
//! the way Kubernetes' kubelet and kubectl speak to it (client-go
//! `remotecommand`, protocol `v4.channel.k8s.io`).
//!
//! Why SPDY and not WebSocket: containerd 1.6's streaming server accepts
//! both, but its WebSocket side (`v4.channel.k8s.io` and older) cannot
//! close stdin alone: the first close frame, or a TCP half-close, closes
//! every channel and the connection, so a command reading stdin to its end
//! (`cat`) loses its output and its exit status. SPDY closes one stream
//! (stdin) with a FIN and keeps the others; WebSocket only gained that with
//! `v5.channel.k8s.io`, which this containerd does not offer.
//!
//! What is here: the HTTP/1.1 upgrade, SYN_STREAM with its header block,
//! DATA frames both ways, and reading every frame the server may send. The
//! server's header blocks (in its SYN_REPLYs) are never needed, so they are
//! never decompressed; ours are written as zlib *stored* blocks, which any
//! zlib reader accepts without the SPDY dictionary. The server
//! (moby/spdystream) does no flow control, so neither do we.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::ServerError;

/// The remote command protocol asked for; it carries the exit code as a
/// JSON `metav1.Status` on the error stream.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

const VERSION: u16 = 3;
const FLAG_FIN: u8 = 0x01;
/// Data frames we write are cut at this size.
const MAX_DATA: usize = 32 * 1024;
/// The response head of the upgrade may not be longer than this.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// SPDY control frame types.
pub mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
}

/// One frame read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data { stream: u32, fin: bool, data: Bytes },
    Control { kind: u16, flags: u8, payload: Bytes },
}

impl Frame {
    /// The stream a SYN_REPLY or RST_STREAM is about.
    pub fn control_stream(payload: &[u8]) -> Option<u32> {
        payload.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
    }
}

/// Dials the streaming server at `url` (what CRI `Exec` answered) and
/// upgrades the connection to SPDY/3.1 speaking [`PROTOCOL`].
pub async fn connect(url: &str) -> Result<(FrameReader, FrameWriter), ServerError> {
    let failed = |reason: String| ServerError::Stream { url: url.to_string(), reason };
    let uri: tonic::transport::Uri = url.parse().map_err(|e| failed(format!("not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(failed("only plain http streaming servers are supported".into()));
    }
    let authority = uri.authority().ok_or_else(|| failed("no host in the URL".into()))?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let stream = TcpStream::connect((authority.host().trim_matches(['[', ']']), port))
        .await
        .map_err(|e| failed(format!("connecting: {e}")))?;
    stream.set_nodelay(true).map_err(|e| failed(format!("connecting: {e}")))?;
    let (read, mut write) = stream.into_split();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: {PROTOCOL}\r\nContent-Length: 0\r\n\r\n"
    );
    write.write_all(request.as_bytes()).await.map_err(|e| failed(format!("sending the upgrade: {e}")))?;
    // Buffered from here on: bytes after the response head are frames.
    let mut read = BufReader::new(read);
    let head = read_head(&mut read).await.map_err(|e| failed(format!("reading the upgrade reply: {e}")))?;
    check_upgrade(&head).map_err(failed)?;
    Ok((FrameReader { io: read }, FrameWriter { io: write, headers_started: false }))
}

/// The status line and headers of the reply, up to the blank line.
async fn read_head<R: AsyncRead + Unpin>(read: &mut BufReader<R>) -> std::io::Result<String> {
    let mut head = String::new();
    loop {
        let n = read.read_line(&mut head).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if head.ends_with("\r\n\r\n") || head.ends_with("\n\n") {
            return Ok(head);
        }
        if head.len() > MAX_RESPONSE_HEAD {
            return Err(std::io::Error::other("the reply head is too long"));
        }
    }
}

/// `101 Switching Protocols` with our protocol, else what the server said.
fn check_upgrade(head: &str) -> Result<(), String> {
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(format!("the server refused the upgrade: {}", status.trim()));
    }
    let protocol = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("X-Stream-Protocol-Version").then(|| value.trim())
    });
    match protocol {
        Some(PROTOCOL) => Ok(()),
        other => Err(format!("the server agreed to protocol {other:?}, not {PROTOCOL}")),
    }
}

// === impl FrameReader ===

pub struct FrameReader {
    io: BufReader<OwnedReadHalf>,
}

impl FrameReader {
    /// The next frame; `None` when the server closed the connection
    /// between frames.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        read_frame(&mut self.io).await
    }
}

async fn read_frame<R: AsyncRead + Unpin>(io: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match io.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    io.read_exact(&mut head[1..]).await?;
    let flags = head[4];
    let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0; length];
    io.read_exact(&mut payload).await?;
    let payload = Bytes::from(payload);
    if head[0] & 0x80 != 0 {
        let kind = u16::from_be_bytes([head[2], head[3]]);
        Ok(Some(Frame::Control { kind, flags, payload }))
    } else {
        let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
        Ok(Some(Frame::Data { stream, fin: flags & FLAG_FIN != 0, data: payload }))
    }
}

// === impl FrameWriter ===

pub struct FrameWriter {
    io: OwnedWriteHalf,
    /// Whether the zlib stream of our header blocks has begun.
    headers_started: bool,
}

impl FrameWriter {
    /// Opens stream `id` (odd: the client's) carrying `headers`.
    pub async fn syn_stream(&mut self, id: u32, headers: &[(&str, &str)]) -> std::io::Result<()> {
        let frame = syn_stream_frame(id, headers, !self.headers_started);
        self.headers_started = true;
        write(&mut self.io, &frame).await
    }

    /// `data` on stream `id`, in frames of at most [`MAX_DATA`] bytes; with
    /// `fin` the last one ends our side of the stream.
    pub async fn data(&mut self, id: u32, data: &[u8], fin: bool) -> std::io::Result<()> {
        let mut chunks: Vec<&[u8]> = data.chunks(MAX_DATA).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            write(&mut self.io, &data_frame(id, chunk, fin && i == last)).await?;
        }
        Ok(())
    }

    /// Answers a server's PING with the same frame.
    pub async fn pong(&mut self, payload: &[u8]) -> std::io::Result<()> {
        write(&mut self.io, &control_frame(kind::PING, 0, payload)).await
    }
}

async fn write<W: AsyncWrite + Unpin>(io: &mut W, frame: &[u8]) -> std::io::Result<()> {
    io.write_all(frame).await?;
    io.flush().await
}

fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(8 + payload.len());
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32((u32::from(flags) << 24) | (payload.len() as u32 & 0x00ff_ffff));
    out.put_slice(payload);
    out.to_vec()
}

fn data_frame(id: u32, data: &[u8], fin: bool) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(8 + data.len());
    out.put_u32(id & 0x7fff_ffff);
    let flags = if fin { FLAG_FIN } else { 0 };
    out.put_u32((u32::from(flags) << 24) | (data.len() as u32 & 0x00ff_ffff));
    out.put_slice(data);
    out.to_vec()
}

/// SYN_STREAM for stream `id`: no associated stream, priority 0, then the
/// header block as the next piece of our zlib stream (`first`: its start).
fn syn_stream_frame(id: u32, headers: &[(&str, &str)], first: bool) -> Vec<u8> {
    let mut payload = BytesMut::new();
    payload.put_u32(id & 0x7fff_ffff);
    payload.put_u32(0);
    payload.put_u8(0);
    payload.put_u8(0);
    payload.put_slice(&zlib_stored(&header_block(headers), first));
    control_frame(kind::SYN_STREAM, 0, &payload)
}

/// SPDY/3 name/value block: a count, then length-prefixed names
/// (lowercase) and values.
fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u32(headers.len() as u32);
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        out.put_u32(name.len() as u32);
        out.put_slice(name.as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out.to_vec()
}

/// `data` as deflate stored blocks (never final: the stream goes on with
/// the next frame), preceded by the zlib header when the stream starts and
/// followed by an empty stored block, as a zlib sync flush ends: Go's
/// inflater hands out a stored block's bytes only once it reads the block
/// after it, and must not read past this frame to find it.
fn zlib_stored(data: &[u8], first: bool) -> Vec<u8> {
    let mut out = BytesMut::new();
    if first {
        // Deflate, 32 KiB window, no preset dictionary; 0x7801 % 31 == 0.
        out.put_slice(&[0x78, 0x01]);
    }
    for chunk in data.chunks(usize::from(u16::MAX)) {
        let len = chunk.len() as u16;
        out.put_u8(0); // BFINAL 0, BTYPE 00 (stored), padding
        out.put_u16_le(len);
        out.put_u16_le(!len);
        out.put_slice(chunk);
    }
    out.put_slice(&SYNC_FLUSH);
    out.to_vec()
}

/// An empty, non-final stored block.
const SYNC_FLUSH: [u8; 5] = [0x00, 0x00, 0x00, 0xff, 0xff];

/// The `Width`/`Height` JSON the resize stream carries.
pub fn resize_message(width: u32, height: u32) -> Vec<u8> {
    serde_json::json!({"Width": width, "Height": height}).to_string().into_bytes()
}

/// A GOAWAY or RST_STREAM payload's status code (for logs).
pub fn status_code(payload: &[u8]) -> Option<u32> {
    let mut p = payload.get(4..8)?;
    Some(p.get_u32())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let mut wire = data_frame(5, b"hello", true);
        wire.extend(control_frame(kind::GOAWAY, 0, &[0, 0, 0, 0, 0, 0, 0, 0]));
        let mut r = &wire[..];
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Some(Frame::Data { stream: 5, fin: true, data: Bytes::from_static(b"hello") })
        );
        let Some(Frame::Control { kind, payload, .. }) = read_frame(&mut r).await.unwrap() else { panic!() };
        assert_eq!((kind, status_code(&payload)), (kind::GOAWAY, Some(0)));
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
    }

    #[test]
    fn syn_stream_carries_a_stored_zlib_header_block() {
        let frame = syn_stream_frame(3, &[("streamType", "stdin")], true);
        assert_eq!(&frame[..4], &[0x80, 0x03, 0x00, 0x01]);
        let length = u32::from_be_bytes([0, frame[5], frame[6], frame[7]]) as usize;
        assert_eq!(length, frame.len() - 8);
        assert_eq!(Frame::control_stream(&frame[8..]), Some(3));
        let block = &frame[18..];
        assert_eq!(&block[..2], &[0x78, 0x01]);
        assert_eq!((u16::from_be_bytes([0x78, 0x01]) % 31), 0);
        let stored = &block[2..];
        let len = u16::from_le_bytes([stored[1], stored[2]]) as usize;
        assert_eq!(u16::from_le_bytes([stored[3], stored[4]]), !(len as u16));
        let headers = &stored[5..5 + len];
        assert_eq!(headers, header_block(&[("streamtype", "stdin")]).as_slice());
        assert_eq!(&stored[5 + len..], &SYNC_FLUSH, "the block ends with a sync flush");
        // Later blocks continue the same zlib stream: no second header.
        let next = syn_stream_frame(5, &[("streamType", "stdout")], false);
        assert_eq!(next[18], 0);
    }

    #[test]
    fn upgrade_replies_are_checked() {
        let ok = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
                  X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n";
        assert_eq!(check_upgrade(ok), Ok(()));
        let refused = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert!(check_upgrade(refused).unwrap_err().contains("404 Not Found"));
        let old = "HTTP/1.1 101 Switching Protocols\r\nX-Stream-Protocol-Version: v2.channel.k8s.io\r\n\r\n";
        assert!(check_upgrade(old).unwrap_err().contains("v2.channel.k8s.io"));
    }

    #[test]
    fn resize_is_kubernetes_terminal_size_json() {
        let v: serde_json::Value = serde_json::from_slice(&resize_message(80, 24)).unwrap();
        assert_eq!(v, serde_json::json!({"Width": 80, "Height": 24}));
    }
}
