//! The gRPC PreprocessService on 127.0.0.1 port 0: a real archive streamed in, the volume out;
//! typed errors in the status details; health and reflection served.

use ct_proto::codec::VolumeAssembler;
use ct_proto::v1::preprocess_service_client::PreprocessServiceClient;
use ct_proto::v1::{ArchiveChunk, ArchiveHeader, InputFormat, PrepareOptions, archive_chunk};
use preprocess_svc::service::{Preprocessor, run};
use preprocess_svc::{PrepareConfig, prepare_path};
use std::path::PathBuf;
use tonic::transport::Channel;

async fn start() -> (Channel, ct_service::Shutdown, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let stop = ct_service::Shutdown::new();
    tokio::spawn(run(listener, Some(admin), Preprocessor::new(PrepareConfig::default(), 2), stop.clone()));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    (channel, stop, admin_addr)
}

/// `GET path` on the admin port: (status, body).
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

fn request(bytes: Vec<u8>, options: PrepareOptions) -> impl tokio_stream::Stream<Item = ArchiveChunk> {
    let header = ArchiveChunk {
        part: Some(archive_chunk::Part::Header(ArchiveHeader {
            format: InputFormat::Zip as i32,
            total_bytes: bytes.len() as u64,
            filename: "study.zip".into(),
            options: Some(options),
        })),
    };
    let data: Vec<ArchiveChunk> = bytes.chunks(1 << 20).map(|c| ArchiveChunk { part: Some(archive_chunk::Part::Data(c.to_vec().into())) }).collect();
    tokio_stream::iter(std::iter::once(header).chain(data))
}

fn philips_study() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/dicom/series/dcm_qa_ct_philips_ingenuity_study_S21570_scout_5mm28sl_sc.zip")
}

#[tokio::test]
async fn streams_a_real_study_in_and_the_volume_out() {
    let (channel, stop, admin) = start().await;
    let mut client = PreprocessServiceClient::new(channel.clone());
    let bytes = std::fs::read(philips_study()).unwrap();
    let opts = PrepareOptions { skip_lung_validation: true, omit_lung_mask: false };
    let mut stream = client.prepare(request(bytes, opts)).await.unwrap().into_inner();
    let mut asm = VolumeAssembler::new(1 << 32);
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        asm.push(chunk).unwrap();
        chunks += 1;
    }
    let (header, volume, mask) = asm.finish().unwrap();
    assert!(chunks > 5);
    assert_eq!(header.dims, [512, 512, 28]);
    assert!(header.kernel.contains("UB"));
    assert!(mask.is_none());
    // identical to what the library produces locally
    let local = prepare_path(&philips_study(), &PrepareConfig { skip_lung_validation: true, ..PrepareConfig::default() }).unwrap();
    assert_eq!(volume, local.volume);
    assert_eq!(header.series_uid, local.meta.series_uid);

    // health: SERVING
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health.check(tonic_health::pb::HealthCheckRequest { service: "ct.v1.PreprocessService".into() }).await.unwrap();
    assert_eq!(r.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    assert_eq!(admin_get(admin, "/ready").await.0, 200);
    assert!(admin_get(admin, "/metrics").await.1.contains("ct_preprocess_requests_total"));
    stop.trigger();
}

#[tokio::test]
async fn bad_input_gets_a_typed_status_and_the_service_keeps_serving() {
    let (channel, stop, admin) = start().await;
    let mut client = PreprocessServiceClient::new(channel);
    for (bytes, code, error_type) in [
        (b"this is not a zip".to_vec(), tonic::Code::InvalidArgument, "not_an_archive"),
        (Vec::new(), tonic::Code::InvalidArgument, "not_an_archive"),
        (std::fs::read(philips_study()).unwrap(), tonic::Code::FailedPrecondition, "lungs_too_short"),
    ] {
        let err = match client.prepare(request(bytes, PrepareOptions::default())).await {
            Err(s) => s,
            Ok(r) => r.into_inner().message().await.expect_err("an error status"),
        };
        assert_eq!(err.code(), code, "{err:?}");
        assert_eq!(ct_proto::errors::error_type(&err).as_deref(), Some(error_type));
    }
    assert_eq!(admin_get(admin, "/ready").await.0, 200);
    assert!(admin_get(admin, "/metrics").await.1.contains("ct_preprocess_requests_total"));
    stop.trigger();
}
