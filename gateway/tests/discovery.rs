//! `dns` upstream discovery against real tonic servers on 127.0.0.1 port 0: the balanced channel
//! spreads calls over every resolved address and follows the resolver's answers; the gateway
//! wires it into its clients, `/upstreams` and `/metrics`. The host-name resolver is injected (two
//! local servers have two ports, which no single host name with one URL port resolves to).

use gateway::upstream::{DnsUpstream, Resolver};
use gateway::{Config, Discovery, Upstreams};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SERVICES: [&str; 3] = ["ct.v1.PreprocessService", "ct.v1.ModelService", "ct.v1.EnsembleService"];

/// A real grpc.health.v1 server that counts the calls it gets.
struct Replica {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    reporter: tonic_health::server::HealthReporter,
    stop: ct_service::Shutdown,
}

impl Replica {
    async fn start() -> Self {
        let (reporter, health) = tonic_health::server::health_reporter();
        for s in SERVICES {
            reporter.set_service_status(s, tonic_health::ServingStatus::Serving).await;
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let counted = tonic::service::interceptor::InterceptedService::new(health, move |req: tonic::Request<()>| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(req)
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = ct_service::Shutdown::new();
        let router = tonic::transport::Server::builder().add_service(counted);
        tokio::spawn(ct_service::serve_grpc(listener, router, stop.wait()));
        Self { addr, calls, reporter, stop }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.trigger();
    }
}

/// A resolver whose answer the test sets: every host resolves to it.
#[derive(Clone)]
struct Answer(Arc<Mutex<Result<Vec<SocketAddr>, String>>>);

impl Answer {
    fn new(addrs: Vec<SocketAddr>) -> Self {
        Self(Arc::new(Mutex::new(Ok(addrs))))
    }

    fn set(&self, a: Result<Vec<SocketAddr>, &str>) {
        *self.0.lock().unwrap() = a.map_err(str::to_string);
    }

    fn resolver(&self) -> Resolver {
        let answer = self.0.clone();
        Arc::new(move |_host: String, _port: u16| {
            let a = answer.lock().unwrap().clone();
            Box::pin(async move { a.map_err(std::io::Error::other) })
        })
    }
}

async fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn check(client: &mut HealthClient<tonic::transport::Channel>) {
    let r = tokio::time::timeout(Duration::from_secs(5), client.check(HealthCheckRequest { service: "ct.v1.ModelService".into() })).await;
    let status = r.expect("answered in time").expect("check succeeded").into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

fn dns_config() -> Config {
    Config { upstream_discovery: Discovery::Dns, upstream_resolve_interval: Duration::from_millis(50), ..Config::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balanced_channel_spreads_calls_and_follows_the_resolved_addresses() {
    let (a, b) = (Replica::start().await, Replica::start().await);
    let answer = Answer::new(vec![a.addr, b.addr]);
    let gauge = prometheus::IntGauge::new("endpoints", "test").unwrap();
    let shutdown = ct_service::Shutdown::new();
    let up = DnsUpstream::spawn("ctclip", "http://ctclip-svc-headless:50052", &dns_config(), answer.resolver(), gauge.clone(), &shutdown).expect("spawn");
    let mut sorted = vec![a.addr.to_string(), b.addr.to_string()];
    sorted.sort();
    eventually("both addresses resolved", Duration::from_secs(3), || up.endpoints.snapshot() == sorted).await;
    assert_eq!(gauge.get(), 2);

    // calls are spread over both replicas (each pick is random among the ready connections)
    let mut client = HealthClient::new(up.channel.clone());
    for _ in 0..40 {
        check(&mut client).await;
    }
    assert_eq!(a.calls() + b.calls(), 40);
    assert!(a.calls() > 0 && b.calls() > 0, "calls per replica: {} and {}", a.calls(), b.calls());

    // a call in flight on b (a Watch stream) when b disappears from the answer
    let mut on_b = None;
    for _ in 0..100 {
        let before = b.calls();
        let mut stream = client.watch(HealthCheckRequest { service: "ct.v1.ModelService".into() }).await.expect("watch").into_inner();
        assert_eq!(stream.message().await.expect("first status").expect("status").status, ServingStatus::Serving as i32);
        if b.calls() > before {
            on_b = Some(stream);
            break;
        }
    }
    let mut on_b = on_b.expect("a watch landed on b");

    // b disappears from the answer: it gets no new call, the one in flight goes on
    answer.set(Ok(vec![a.addr]));
    eventually("b removed", Duration::from_secs(3), || up.endpoints.snapshot() == [a.addr.to_string()]).await;
    assert_eq!(gauge.get(), 1);
    check(&mut client).await; // the balancer applies the removal
    b.reporter.set_service_status("ct.v1.ModelService", tonic_health::ServingStatus::NotServing).await;
    let next = tokio::time::timeout(Duration::from_secs(5), on_b.message()).await.expect("in time").expect("stream alive").expect("a status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    b.reporter.set_service_status("ct.v1.ModelService", tonic_health::ServingStatus::Serving).await;
    let (a0, b0) = (a.calls(), b.calls());
    for _ in 0..20 {
        check(&mut client).await;
    }
    assert_eq!((a.calls() - a0, b.calls() - b0), (20, 0));

    // a failing resolver and an empty answer keep the last known set
    for bad in [Err("no such host"), Ok(vec![])] {
        answer.set(bad);
        tokio::time::sleep(Duration::from_millis(200)).await; // a few resolution rounds
        assert_eq!(up.endpoints.snapshot(), [a.addr.to_string()]);
        assert_eq!(gauge.get(), 1);
        check(&mut client).await;
    }

    // b comes back
    answer.set(Ok(vec![b.addr, a.addr]));
    eventually("b back", Duration::from_secs(3), || up.endpoints.snapshot() == sorted).await;
    let b0 = b.calls();
    for _ in 0..40 {
        check(&mut client).await;
    }
    assert!(b.calls() > b0, "b gets calls again");

    // the resolver task ends with the shutdown
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(2), up.task).await.expect("resolver task stopped").expect("no panic");
}

/// One HTTP/1.1 GET: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_in_dns_mode_spreads_every_upstream_over_its_replicas() {
    let (a, b) = (Replica::start().await, Replica::start().await);
    let answer = Answer::new(vec![a.addr, b.addr]);
    let url = |port: u16| format!("http://replicas.invalid:{port}");
    let config = Config {
        upstreams: Upstreams {
            preprocess_url: url(50051),
            ctclip_url: url(50052),
            supervised_url: url(50053),
            diffusion_url: url(50054),
            mednext_url: url(50055),
            fvlm_url: url(50056),
            ensemble_url: url(50057),
        },
        health_interval: Duration::from_millis(20),
        ..dns_config()
    };
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let shutdown = ct_service::Shutdown::new();
    let task = tokio::spawn(gateway::run_with_resolver(config, http, admin, shutdown.clone(), answer.resolver()));

    // ready once the health checks, which go through the balanced channels, are answered
    let t = Instant::now();
    while get(admin_addr, "/ready").await.0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(5), "not ready: {}", get(admin_addr, "/upstreams").await.1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // seven upstreams checked every 20 ms: both replicas get checks
    let t = Instant::now();
    while a.calls() == 0 || b.calls() == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "checks per replica: {} and {}", a.calls(), b.calls());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut sorted = vec![a.addr.to_string(), b.addr.to_string()];
    sorted.sort();
    let (status, body) = get(admin_addr, "/upstreams").await;
    assert_eq!(status, 200);
    let ups: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let ups = ups.as_array().expect("array");
    assert_eq!(ups.len(), 7);
    for u in ups {
        assert_eq!(u["discovery"], "dns", "{u}");
        assert_eq!(u["status"], "serving", "{u}");
        assert_eq!(u["endpoints"], serde_json::json!(sorted), "{u}");
    }
    let (_, metrics) = get(admin_addr, "/metrics").await;
    for name in ["preprocess", "ctclip", "supervised", "diffusion", "mednext", "fvlm", "ensemble"] {
        let line = format!("ct_gateway_upstream_endpoints{{upstream=\"{name}\"}} 2");
        assert!(metrics.lines().any(|l| l == line), "{line} missing in\n{metrics}");
    }

    // the shutdown stops the gateway, its poller and its seven resolver tasks
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("gateway stopped").expect("no panic").expect("clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_discovery_lists_the_url_as_its_one_endpoint() {
    let a = Replica::start().await;
    let url = format!("http://{}", a.addr);
    let config = Config {
        upstreams: Upstreams {
            preprocess_url: url.clone(),
            ctclip_url: url.clone(),
            supervised_url: url.clone(),
            diffusion_url: url.clone(),
            mednext_url: url.clone(),
            fvlm_url: url.clone(),
            ensemble_url: url.clone(),
        },
        health_interval: Duration::from_millis(20),
        ..Config::default()
    };
    assert_eq!(config.upstream_discovery, Discovery::Static);
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let shutdown = ct_service::Shutdown::new();
    let task = tokio::spawn(gateway::run(config, http, admin, shutdown.clone()));
    let t = Instant::now();
    while get(admin_addr, "/ready").await.0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(5), "not ready: {}", get(admin_addr, "/upstreams").await.1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ups: serde_json::Value = serde_json::from_str(&get(admin_addr, "/upstreams").await.1).expect("JSON");
    for u in ups.as_array().expect("array") {
        assert_eq!(u["discovery"], "static", "{u}");
        assert_eq!(u["endpoints"], serde_json::json!([a.addr.to_string()]), "{u}");
    }
    let (_, metrics) = get(admin_addr, "/metrics").await;
    assert!(metrics.lines().any(|l| l == "ct_gateway_upstream_endpoints{upstream=\"fvlm\"} 1"), "{metrics}");
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("gateway stopped").expect("no panic").expect("clean exit");
}
