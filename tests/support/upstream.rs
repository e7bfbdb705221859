//! A fake upstream DNS server for the tests of forwarding.

use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

/// A fake upstream: `www.example.test` A → 192.0.2.1, NXDOMAIN otherwise.
/// Runs until the returned handle is aborted.
pub async fn fake_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
            let Ok(req) = Message::from_vec(&buf[..n]) else { continue };
            let mut resp = Message::response(req.metadata.id, OpCode::Query);
            resp.metadata.recursion_desired = req.metadata.recursion_desired;
            resp.metadata.recursion_available = true;
            resp.metadata.authoritative = true;
            let Some(q) = req.queries.first().cloned() else { continue };
            let name = q.name().to_lowercase().to_ascii();
            if name == "www.example.test." && q.query_type() == RecordType::A {
                let rec = Record::from_rdata(q.name().clone(), 60, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))));
                resp.add_answer(rec);
            } else if name != "www.example.test." {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
            resp.add_query(q);
            let _ = socket.send_to(&resp.to_vec().unwrap(), from).await;
        }
    });
    (addr, task)
}
