//! Name resolution for upstream connections when `[dns]` names servers: lookups go to the
//! primary servers and, when they time out, refuse or fail, to the fallback servers.
//! Answers are cached for their DNS TTL and no longer, so an upstream that moves is
//! found at its new address once the old record expires. (Without `[dns]`, the system
//! resolver answers each new connection.)

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long one DNS server may take to answer before the next one (or the fallback
/// group) is asked. Short, because a client's pull waits on it.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// Which DNS servers to ask.
#[derive(Clone, Debug, Default)]
pub struct DnsOptions {
    /// Asked first.
    pub servers: Vec<SocketAddr>,
    /// Asked when every primary server times out, refuses or fails.
    pub fallback: Vec<SocketAddr>,
}

/// A resolver with a primary and an optional fallback group of servers.
pub struct FallbackResolver {
    primary: TokioResolver,
    fallback: Option<TokioResolver>,
}

fn resolver(servers: &[SocketAddr]) -> TokioResolver {
    let mut group = NameServerConfigGroup::new();
    for s in servers {
        // UDP only: a TCP entry per server would double the wait on a silent server
        // before the fallback group is asked; address records fit in a UDP answer.
        group.push(NameServerConfig::new(*s, Protocol::Udp));
    }
    let mut opts = ResolverOpts::default();
    opts.timeout = DNS_TIMEOUT;
    opts.attempts = 0; // no retry of the same group: the fallback group is the retry
    // Ask for A and AAAA at once, so a silent server costs one timeout, not two.
    opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
    TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], group),
        TokioConnectionProvider::default(),
    )
    .with_options(opts)
    .build()
}

impl std::fmt::Debug for FallbackResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackResolver")
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl FallbackResolver {
    pub fn new(options: &DnsOptions) -> Arc<FallbackResolver> {
        Arc::new(FallbackResolver {
            primary: resolver(&options.servers),
            fallback: (!options.fallback.is_empty()).then(|| resolver(&options.fallback)),
        })
    }

    /// Resolve `host` to addresses (port 0; the caller sets the port).
    pub async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, String> {
        let first = self.primary.lookup_ip(host).await;
        let found = match first {
            Ok(l) if l.iter().next().is_some() => l,
            first => {
                let why = match &first {
                    Ok(_) => "no addresses".to_owned(),
                    Err(e) => e.to_string(),
                };
                let Some(fallback) = &self.fallback else {
                    return Err(format!("cannot resolve {host}: {why}"));
                };
                tracing::info!(%host, primary = %why, "DNS primary failed; asking the fallback servers");
                fallback
                    .lookup_ip(host)
                    .await
                    .map_err(|e| format!("cannot resolve {host}: primary: {why}; fallback: {e}"))?
            }
        };
        Ok(found.iter().map(|ip| SocketAddr::new(ip, 0)).collect())
    }
}

impl Resolve for FallbackResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let primary = self.primary.clone();
        let fallback = self.fallback.clone();
        Box::pin(async move {
            let me = FallbackResolver { primary, fallback };
            let addrs = me.lookup(name.as_str()).await?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
    use hickory_resolver::proto::rr::rdata::A;
    use hickory_resolver::proto::rr::{RData, Record, RecordType};
    use hickory_resolver::proto::serialize::binary::BinEncodable;
    use std::net::Ipv4Addr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// How a test DNS server behaves.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Behaviour {
        /// Answer A queries with this address (TTL 1 s).
        Answer(Ipv4Addr),
        /// Answer REFUSED.
        Refuse,
        /// Never answer.
        Silent,
    }

    /// A UDP DNS server on 127.0.0.1 for tests; counts the queries it receives.
    pub struct TestDns {
        pub addr: SocketAddr,
        pub behaviour: Arc<Mutex<Behaviour>>,
        pub queries: Arc<AtomicUsize>,
    }

    impl TestDns {
        pub async fn start(behaviour: Behaviour) -> TestDns {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = sock.local_addr().unwrap();
            let b = Arc::new(Mutex::new(behaviour));
            let queries = Arc::new(AtomicUsize::new(0));
            let (b2, q2) = (b.clone(), queries.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1500];
                loop {
                    let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                        return;
                    };
                    q2.fetch_add(1, Ordering::SeqCst);
                    let Ok(q) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    let mode = *b2.lock().unwrap();
                    let mut r = Message::new();
                    r.set_id(q.id())
                        .set_message_type(MessageType::Response)
                        .set_op_code(OpCode::Query)
                        .set_recursion_desired(true)
                        .set_recursion_available(true);
                    r.add_queries(q.queries().to_vec());
                    match mode {
                        Behaviour::Silent => continue,
                        Behaviour::Refuse => {
                            r.set_response_code(ResponseCode::Refused);
                        }
                        Behaviour::Answer(ip) => {
                            for query in q.queries() {
                                if query.query_type() == RecordType::A {
                                    r.add_answer(Record::from_rdata(
                                        query.name().clone(),
                                        1,
                                        RData::A(A(ip)),
                                    ));
                                }
                            }
                        }
                    }
                    let _ = sock.send_to(&r.to_bytes().unwrap(), peer).await;
                }
            });
            TestDns {
                addr,
                behaviour: b,
                queries,
            }
        }
    }

    #[tokio::test]
    async fn falls_back_when_the_primary_is_silent_or_refuses() {
        let good = TestDns::start(Behaviour::Answer(Ipv4Addr::new(127, 0, 0, 7))).await;
        for bad in [Behaviour::Silent, Behaviour::Refuse] {
            let primary = TestDns::start(bad).await;
            let r = FallbackResolver::new(&DnsOptions {
                servers: vec![primary.addr],
                fallback: vec![good.addr],
            });
            let addrs = r.lookup("upstream.test.").await.unwrap();
            assert_eq!(addrs[0].ip().to_string(), "127.0.0.7", "{bad:?}");
            assert!(
                primary.queries.load(Ordering::SeqCst) >= 1,
                "the primary was asked first"
            );
        }
        // no fallback configured: the failure is reported
        let silent = TestDns::start(Behaviour::Silent).await;
        let r = FallbackResolver::new(&DnsOptions {
            servers: vec![silent.addr],
            fallback: vec![],
        });
        assert!(r.lookup("upstream.test.").await.is_err());
    }

    #[tokio::test]
    async fn a_working_primary_is_used_and_its_answers_expire_with_their_ttl() {
        let primary = TestDns::start(Behaviour::Answer(Ipv4Addr::new(127, 0, 0, 1))).await;
        let fallback = TestDns::start(Behaviour::Answer(Ipv4Addr::new(127, 0, 0, 9))).await;
        let r = FallbackResolver::new(&DnsOptions {
            servers: vec![primary.addr],
            fallback: vec![fallback.addr],
        });
        assert_eq!(
            r.lookup("moving.test.").await.unwrap()[0].ip().to_string(),
            "127.0.0.1"
        );
        assert_eq!(fallback.queries.load(Ordering::SeqCst), 0);
        // the upstream moves; within the 1 s TTL the cached answer stands, after it the new one
        *primary.behaviour.lock().unwrap() = Behaviour::Answer(Ipv4Addr::new(127, 0, 0, 2));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            r.lookup("moving.test.").await.unwrap()[0].ip().to_string(),
            "127.0.0.2"
        );
    }
}
