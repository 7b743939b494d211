//! The gRPC PreprocessService on 127.0.0.1 port 0: a real archive streamed in, the volume out;
//! typed errors in the status details; health and reflection served.

use ct_proto::codec::VolumeAssembler;
use ct_proto::v1::preprocess_service_client::PreprocessServiceClient;
use ct_proto::v1::{ArchiveChunk, ArchiveHeader, InputFormat, PrepareOptions, VolumeChunk, archive_chunk, volume_chunk};
use preprocess_svc::service::{Preprocessor, run};
use preprocess_svc::{PrepareConfig, prepare_path};
use std::path::PathBuf;
use tonic::transport::Channel;

async fn start() -> (Channel, ct_service::Shutdown, std::net::SocketAddr) {
    start_with(Preprocessor::new(PrepareConfig::default(), 2)).await
}

async fn start_with(svc: Preprocessor) -> (Channel, ct_service::Shutdown, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let stop = ct_service::Shutdown::new();
    tokio::spawn(run(listener, Some(admin), svc, stop.clone()));
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
            size_hint: 0,
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
    let opts = PrepareOptions { skip_lung_validation: true, ..Default::default() };
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

/// Every message of a Prepare call.
async fn prepare_all(client: &mut PreprocessServiceClient<Channel>, bytes: Vec<u8>, opts: PrepareOptions) -> Vec<VolumeChunk> {
    let mut stream = client.prepare(request(bytes, opts)).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(c) = stream.message().await.unwrap() {
        out.push(c);
    }
    out
}

fn shared_file(chunks: &[VolumeChunk]) -> String {
    match chunks {
        [VolumeChunk { part: Some(volume_chunk::Part::Header(_)) }, VolumeChunk { part: Some(volume_chunk::Part::Shared(s)) }] => s.file.clone(),
        other => panic!("expected a header and a shared part, got {} messages", other.len()),
    }
}

#[tokio::test]
async fn one_machine_mode_writes_a_shared_file_that_is_removed_unless_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let grace = std::time::Duration::from_millis(300);
    let svc = Preprocessor::new(PrepareConfig::default(), 2).with_shared_dir(Some(dir.path().to_path_buf())).with_claim_grace(grace);
    let (channel, stop, admin) = start_with(svc).await;
    let mut client = PreprocessServiceClient::new(channel);
    let study = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/studies/chest_abnormal.zip")).unwrap();

    // streamed (not asked for) and shared give the same header, volume and lung mask
    let streamed = prepare_all(&mut client, study.clone(), PrepareOptions::default()).await;
    assert!(streamed.len() > 2);
    let mut asm = VolumeAssembler::new(1 << 32);
    streamed.into_iter().for_each(|c| asm.push(c).unwrap());
    let expected = asm.finish().unwrap();
    assert!(expected.2.is_some(), "the lung mask is sent");

    let shared = prepare_all(&mut client, study.clone(), PrepareOptions { shared_volume: true, ..Default::default() }).await;
    let name = shared_file(&shared);
    assert!(name.starts_with("ct-prep-") && dir.path().join(&name).is_file(), "{name}");
    let mut asm = VolumeAssembler::new(1 << 32).with_shared_dir(Some(dir.path().to_path_buf()));
    shared.into_iter().for_each(|c| asm.push(c).unwrap());
    assert_eq!(asm.finish().unwrap(), expected);

    // nobody claimed it: removed after the grace period
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while dir.path().join(&name).exists() {
        assert!(std::time::Instant::now() < deadline, "unclaimed {name} was not removed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // claimed by renaming: the service leaves it alone
    let name = shared_file(&prepare_all(&mut client, study, PrepareOptions { shared_volume: true, omit_lung_mask: true, ..Default::default() }).await);
    let claimed = dir.path().join("claimed.vol");
    std::fs::rename(dir.path().join(&name), &claimed).unwrap();
    tokio::time::sleep(grace * 3).await;
    let h = &expected.0;
    assert_eq!(std::fs::metadata(&claimed).unwrap().len(), h.voxel_bytes, "omit_lung_mask: voxels only");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let metrics = admin_get(admin, "/metrics").await.1;
    for stage in ["receive", "decode_assemble", "lungs", "shared_write"] {
        assert!(metrics.contains(&format!("ct_preprocess_stage_seconds_count{{stage=\"{stage}\"}} ")), "{stage}: {metrics}");
    }
    stop.trigger();
}
