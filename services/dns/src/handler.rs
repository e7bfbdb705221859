//! The DNS request handler: one query in, one answer out, from the cluster
//! zone in memory or from the upstream resolvers. Every rcode this server
//! sends is decided here.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use hickory_proto::op::{Edns, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::forward::Forwarder;
use crate::metrics::{DnsMetrics, Source};
use crate::zone::{Lookup, Zone};

/// The current cluster zone; the view loop swaps in a new one on change.
pub type SharedZone = Arc<RwLock<Arc<Zone>>>;

pub struct Handler {
    zone: SharedZone,
    forwarder: Option<Forwarder>,
    metrics: DnsMetrics,
}

/// An answer before it is encoded.
struct Reply {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
}

impl Reply {
    fn error(rcode: ResponseCode) -> Self {
        Self { rcode, authoritative: false, answers: Vec::new(), authorities: Vec::new() }
    }
}

impl Handler {
    /// `forwarder` is None when no upstream is known: other names get SERVFAIL.
    pub fn new(zone: SharedZone, forwarder: Option<Forwarder>, metrics: DnsMetrics) -> Self {
        Self { zone, forwarder, metrics }
    }

    fn current_zone(&self) -> Arc<Zone> {
        // The writer only swaps an Arc, so a poisoned lock still holds a whole zone.
        self.zone.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn answer(&self, request: &Request) -> (RecordType, Reply, Source) {
        let [query] = request.queries.queries() else {
            return (RecordType::ANY, Reply::error(ResponseCode::FormErr), Source::Cluster);
        };
        let rtype = query.query_type();
        if request.metadata.message_type != MessageType::Query {
            return (rtype, Reply::error(ResponseCode::FormErr), Source::Cluster);
        }
        if request.metadata.op_code != OpCode::Query {
            return (rtype, Reply::error(ResponseCode::NotImp), Source::Cluster);
        }
        let zone = self.current_zone();
        if zone.contains(query.name()) {
            return (rtype, cluster_reply(&zone, query.name(), rtype), Source::Cluster);
        }
        let Some(forwarder) = &self.forwarder else {
            return (rtype, Reply::error(ResponseCode::ServFail), Source::Forward);
        };
        let forwarded = forwarder.forward(query.name(), rtype).await;
        let reply = Reply {
            rcode: forwarded.rcode,
            authoritative: false,
            answers: forwarded.answers,
            authorities: forwarded.authorities,
        };
        (rtype, reply, Source::Forward)
    }
}

/// The zone's answer: records, NODATA (NOERROR, no answers) or NXDOMAIN,
/// the negative ones with the SOA so resolvers can cache them.
fn cluster_reply(zone: &Zone, name: &hickory_proto::rr::LowerName, rtype: RecordType) -> Reply {
    let (rcode, answers) = match zone.lookup(name, rtype) {
        Lookup::Found(records) => (ResponseCode::NoError, records.into_iter().cloned().collect::<Vec<_>>()),
        Lookup::NxDomain => (ResponseCode::NXDomain, Vec::new()),
    };
    let authorities = if answers.is_empty() { vec![zone.soa().clone()] } else { Vec::new() };
    Reply { rcode, authoritative: true, answers, authorities }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let start = Instant::now();
        let (rtype, reply, source) = self.answer(request).await;

        // A request with EDNS gets EDNS back (RFC 6891 6.1.1), version 0.
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.rcode;
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = self.forwarder.is_some();
        let message = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        let info = match response.send_response(message).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(src = %request.src(), %error, "sending DNS response failed");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_proto::op::Header { metadata, counts: HeaderCounts::default() })
            }
        };
        self.metrics.observe(rtype, reply.rcode, source, start.elapsed());
        info
    }
}
