//! The whole stack on 127.0.0.1 port 0 with the demo bundles: decisions on the generated
//! studies, every bad-input class with its HTTP code and reference body, limits, overload,
//! deadline, the missing-model policy, concurrent uploads and NIfTI input.

use e2e::fixtures::{gzip, read, study_nifti, study_uid, study_zip, testdata, uniform_nifti, zip_dir, zip_of};
use e2e::http::{self, HeldUpload};
use e2e::{closed_port, stack};
use serde_json::Value;
use std::time::Duration;

const SUCCESS_KEYS: [&str; 9] = [
    "study_uid",
    "series_uid",
    "probability_of_pathology",
    "pathology",
    "top_pathologies",
    "probability_of_pathology_thoracic",
    "pathology_thoracic",
    "processing_status",
    "time_of_processing",
];
const ZIP_FAILURE_KEYS: [&str; 11] = [
    "study_uid",
    "series_uid",
    "probability_of_pathology",
    "pathology",
    "most_dangerous_pathology_type",
    "processing_status",
    "time_of_processing",
    "error",
    "error_type",
    "error_cause",
    "request_id",
];

fn assert_success(r: &http::Response) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    let keys = r.keys();
    assert_eq!(&keys[..9], SUCCESS_KEYS, "reference fields first, in order");
    let v = r.json();
    assert_eq!(v["processing_status"], "Success");
    let p = v["probability_of_pathology"].as_f64().expect("probability");
    assert!((0.0..=1.0).contains(&p));
    assert!(v["time_of_processing"].as_f64().expect("seconds") > 0.0);
    assert_eq!(v["request_id"].as_str(), r.header("x-request-id"), "request id in header and body");
    if v["pathology"] == 0 {
        assert_eq!(v["top_pathologies"], serde_json::json!([]), "no top pathologies for a normal study");
    }
    v
}

/// A failure: status, the reference's body for the endpoint plus error_type / error_cause.
fn assert_failure(r: &http::Response, status: u16, error_type: &str, cause: &str, nifti: bool) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    let mut want: Vec<&str> = ZIP_FAILURE_KEYS.to_vec();
    if nifti {
        want[4] = "top_pathologies";
    }
    assert_eq!(r.keys(), want, "failure body fields and order");
    let v = r.json();
    assert_eq!(v["processing_status"], "Failure");
    assert_eq!((v["study_uid"].as_str(), v["series_uid"].as_str()), (Some(""), Some("")));
    assert!(v["probability_of_pathology"].is_null() && v["pathology"].is_null());
    if nifti {
        assert_eq!(v["top_pathologies"], serde_json::json!([]));
    } else {
        assert!(v["most_dangerous_pathology_type"].is_null());
    }
    assert_eq!(v["error_type"], error_type, "{v}");
    assert_eq!(v["error_cause"], cause, "{v}");
    assert!(!v["error"].as_str().unwrap_or_default().is_empty());
    assert_eq!(v["request_id"].as_str(), r.header("x-request-id"));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_studies_get_the_expected_decisions() {
    let s = stack().await;
    let gw = s.gateway(s.gateway_config()).await;
    gw.wait_ready(200, Duration::from_secs(30)).await;

    // the reference's small endpoints, and ours
    assert_eq!(http::get(gw.addr, "/health").await.json(), serde_json::json!({"status": "healthy"}));
    let info = http::get(gw.addr, "/").await.json();
    assert_eq!((info["status"].as_str(), info["version"].as_str()), (Some("running"), Some("2.0.0")));
    let openapi = http::get(gw.addr, "/openapi.json").await;
    assert_eq!(openapi.header("content-type"), Some("application/json"));
    assert!(openapi.json()["paths"]["/predict"]["post"].is_object());
    assert_eq!(http::get(gw.admin, "/live").await.status, 200);

    let normal = http::post_file_with(gw.addr, "/predict", "chest_normal.zip", &study_zip("chest_normal"), &[("x-request-id", "e2e-normal-1")]).await;
    let v = assert_success(&normal);
    assert_eq!(normal.header("x-request-id"), Some("e2e-normal-1"), "the client's request id is kept");
    assert_eq!(v["study_uid"], study_uid("chest_normal"));
    assert_eq!(v["pathology"], 0, "normal study: {v}");
    assert_eq!(v["missing_models"], serde_json::json!([]));
    let versions = v["model_versions"].as_object().expect("model_versions");
    assert_eq!(versions.keys().collect::<Vec<_>>(), ["ctclip", "supervised", "diffusion", "mednext", "fvlm"]);
    for stage in ["upload", "preprocess", "relay", "models", "ensemble", "total"] {
        assert!(v["timings_ms"][stage].as_f64().is_some_and(|t| t >= 0.0), "timing {stage}: {v}");
    }
    assert!(v["model_timings_ms"]["fvlm"]["infer"].as_f64().is_some(), "{v}");

    let abnormal = http::post_file(gw.addr, "/predict", "chest_abnormal.zip", &study_zip("chest_abnormal")).await;
    let v = assert_success(&abnormal);
    assert_eq!(abnormal.header("x-request-id").map(str::len), Some(32), "a generated request id");
    assert_eq!(v["study_uid"], study_uid("chest_abnormal"));
    assert_eq!(v["pathology"], 1, "abnormal study: {v}");
    let top = v["top_pathologies"].as_array().expect("top_pathologies");
    assert!((1..=3).contains(&top.len()), "{v}");
    // the demo ensemble has a thoracic model
    assert!(v["probability_of_pathology_thoracic"].as_f64().is_some_and(|p| (0.0..=1.0).contains(&p)), "{v}");
    assert!(v["pathology_thoracic"].is_u64(), "{v}");

    assert_eq!(gw.metric("ct_gateway_requests_total{endpoint=\"/predict\",outcome=\"ok\"}").await, Some(2.0));
    assert_eq!(gw.metric("ct_gateway_stage_seconds_count{stage=\"models\"}").await, Some(2.0));
    assert_eq!(gw.metric("ct_gateway_in_flight").await, Some(0.0));
    assert_eq!(gw.metric("ct_gateway_upstream_up{upstream=\"fvlm\"}").await, Some(1.0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_machine_mode_shares_the_volume_through_a_file_and_removes_it() {
    let s = stack().await;
    // the gateway writes the file from preprocess-svc's stream, or preprocess-svc writes it and
    // the gateway claims it
    let writers = [("gateway", s.upstreams.clone()), ("preprocess-svc", gateway::Upstreams { preprocess_url: s.preprocess_shared_url.clone(), ..s.upstreams.clone() })];
    for (writer, upstreams) in writers {
        let gw = s.gateway(gateway::Config { upstreams, shared_volume_dir: Some(s.shared_dir.clone()), max_in_flight: 4, ..s.gateway_config() }).await;
        let addr = gw.addr;
        let tasks: Vec<_> = ["chest_normal", "chest_abnormal", "chest_abnormal", "chest_normal"]
            .into_iter()
            .map(|name| tokio::spawn(async move { (name, http::post_file(addr, "/predict", "s.zip", &study_zip(name)).await) }))
            .collect();
        for t in tasks {
            let (name, r) = t.await.expect("upload task");
            let v = assert_success(&r);
            assert_eq!(v["study_uid"], study_uid(name).as_str(), "{writer}: {v}");
            assert_eq!(v["pathology"], i64::from(name == "chest_abnormal"), "{writer}: {name}: {v}");
        }
        // every study's file is gone once it has been answered, or free in the pool (at most 2)
        assert_only_pool_files(&s.shared_dir, 2, writer);
        gw.stop().await;
    }

    // a model service without the shared folder refuses the file name: the study fails with a
    // clear status, and its file is removed all the same
    let fvlm = model_server::testing::spawn::<fvlm_svc::Fvlm>(&model_server::testing::demo_bundle("fvlm"), model_server::ServerConfig::default()).await;
    let upstreams = gateway::Upstreams { fvlm_url: format!("http://{}", fvlm.grpc), preprocess_url: s.preprocess_shared_url.clone(), ..s.upstreams.clone() };
    let gw = s.gateway(gateway::Config { upstreams, shared_volume_dir: Some(s.shared_dir.clone()), ..s.gateway_config() }).await;
    let r = http::post_file(gw.addr, "/predict", "s.zip", &study_zip("chest_abnormal")).await;
    assert!(r.status >= 500, "{} {}", r.status, String::from_utf8_lossy(&r.body));
    // a study that did not get every model's answer does not give its file back to the pool (a
    // model service may still map it): it is removed, though the pool of 2 has room
    // (preprocess-svc reused one of the two free files for it)
    assert_only_pool_files(&s.shared_dir, 1, "failed study");
    gw.stop().await;
    fvlm.stop().await;
}

/// The shared folder holds no study file, and at most `max` free pool files.
fn assert_only_pool_files(dir: &std::path::Path, max: usize, what: &str) {
    let left: Vec<String> = std::fs::read_dir(dir).expect("shared folder").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    let pool = left.iter().filter(|n| n.starts_with(ct_proto::codec::POOL_PREFIX)).count();
    assert!(pool == left.len() && pool <= max, "{what}: files left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nifti_uploads_gz_and_plain() {
    let s = stack().await;
    let gw = s.gateway(s.gateway_config()).await;
    let abnormal = http::post_file(gw.addr, "/predict_nifti", "case_17.nii.gz", &gzip(&study_nifti("chest_abnormal"))).await;
    let v = assert_success(&abnormal);
    assert_eq!((v["study_uid"].as_str(), v["series_uid"].as_str()), (Some("nifti_case_17"), Some("nifti_case_17_series")));
    assert_eq!(v["pathology"], 1, "{v}");
    // an uncompressed .nii works too (the reference fails on it)
    let normal = http::post_file(gw.addr, "/predict_nifti", "case_18.nii", &study_nifti("chest_normal")).await;
    let v = assert_success(&normal);
    assert_eq!(v["study_uid"], "nifti_case_18");
    assert_eq!(v["pathology"], 0, "{v}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_class_gets_its_code_and_body() {
    let s = stack().await;
    let gw = s.gateway(s.gateway_config()).await;
    let a = gw.addr;

    // 400: not a ZIP, empty upload, no `file` field, not multipart, bad NIfTI
    let r = http::post_file(a, "/predict", "study.zip", b"this is not a zip archive").await;
    assert_failure(&r, 400, "bad_request", "not_an_archive", false);
    let r = http::post_file(a, "/predict", "study.zip", b"").await;
    assert_failure(&r, 400, "bad_request", "empty_upload", false);
    let ct = http::multipart_type();
    let r = http::request(a, "POST", "/predict", &[("Content-Type", ct.as_str())], &http::multipart("upload", "study.zip", &study_zip("chest_normal"))).await;
    assert_failure(&r, 400, "bad_request", "missing_file_field", false);
    let r = http::request(a, "POST", "/predict", &[("Content-Type", "application/json")], b"{}").await;
    assert_failure(&r, 400, "bad_request", "malformed_multipart", false);
    let r = http::request(a, "POST", "/predict", &[("Content-Type", ct.as_str())], b"--e2e-boundary-7d1f0c\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\ntrunc").await;
    assert_failure(&r, 400, "bad_request", "malformed_multipart", false);
    let r = http::post_file(a, "/predict_nifti", "x.nii.gz", &gzip(b"not a nifti header")).await;
    assert_failure(&r, 400, "bad_request", "invalid_nifti", true);

    // 422: a ZIP without DICOM, too few slices, no lungs (the real head phantom), gantry tilt
    let r = http::post_file(a, "/predict", "docs.zip", &zip_of(&[("readme.md", b"# no images here"), ("data.bin", &[7u8; 4096])])).await;
    assert_failure(&r, 422, "unprocessable", "no_dicom_files", false);
    let r = http::post_file(a, "/predict", "liver.zip", &zip_dir(&testdata("series/dcmqi_ge_lightspeedultra_liver_3sl"))).await;
    let v = assert_failure(&r, 422, "unprocessable", "no_valid_series", false);
    assert_eq!(v["error"], "Недостаточно срезов для обработки (требуется минимум 20 валидных срезов).", "the reference's text");
    // the real Philips head phantom: a little "lung" (air in the head), far too short
    let r = http::post_file(a, "/predict", "phantom.zip", &read(&testdata("series/dcm_qa_ct_philips_ingenuity_study_S21570_scout_5mm28sl_sc.zip"))).await;
    let v = assert_failure(&r, 422, "unprocessable", "lungs_too_short", false);
    assert!(v["error"].as_str().unwrap_or_default().starts_with("Lungs length is "), "the reference's text: {v}");
    // a volume of soft tissue only: no lungs at all
    let r = http::post_file(a, "/predict_nifti", "tissue.nii.gz", &gzip(&uniform_nifti([64, 64, 40], [5.0, 5.0, 5.0], 40))).await;
    let v = assert_failure(&r, 422, "unprocessable", "lungs_not_found", true);
    assert_eq!(v["error"], "Легкие не найдены на изображении или их относительный процент слишком мал.", "the reference's text");
    let r = http::post_file(a, "/predict", "tilt.zip", &read(&testdata("series/dcm_qa_ct_ge_hispeed_head_tilt_28sl.zip"))).await;
    assert_failure(&r, 422, "unprocessable", "inconsistent_geometry", false);

    // the health endpoint is untouched by all this, and the outcomes are counted
    assert_eq!(http::get(a, "/health").await.status, 200);
    assert_eq!(gw.metric("ct_gateway_requests_total{endpoint=\"/predict\",outcome=\"bad_request\"}").await, Some(5.0));
    assert_eq!(gw.metric("ct_gateway_requests_total{endpoint=\"/predict\",outcome=\"unprocessable\"}").await, Some(4.0));
    assert_eq!(gw.metric("ct_gateway_requests_total{endpoint=\"/predict_nifti\",outcome=\"unprocessable\"}").await, Some(1.0));
    assert_eq!(gw.metric("ct_gateway_errors_total{cause=\"lungs_not_found\",error_type=\"unprocessable\"}").await, Some(1.0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413() {
    let s = stack().await;
    let gw = s.gateway(gateway::Config { max_body_bytes: 64 * 1024, ..s.gateway_config() }).await;
    let big = study_zip("chest_normal"); // ~1 MB
    // announced by Content-Length: refused before anything is read
    let r = http::post_file(gw.addr, "/predict", "big.zip", &big).await;
    assert_failure(&r, 413, "too_large", "body_too_large", false);
    // chunked (no length): refused when the limit is crossed while streaming
    let r = http::post_chunked(gw.addr, "/predict", "big.zip", &big, 16 * 1024).await;
    assert_failure(&r, 413, "too_large", "body_too_large", false);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_answers_429_with_retry_after_and_health_stays_up() {
    let s = stack().await;
    let gw = s.gateway(gateway::Config { max_in_flight: 1, queue_depth: 0, retry_after_secs: 3, ..s.gateway_config() }).await;
    let zip = study_zip("chest_abnormal");
    // the only slot is held by an upload that has sent half its body
    let held = HeldUpload::start(gw.addr, "/predict", "held.zip", &zip, zip.len() / 2).await;
    let t = std::time::Instant::now();
    loop {
        if gw.metric("ct_gateway_in_flight").await == Some(1.0) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the held upload never took the slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = http::post_file(gw.addr, "/predict", "second.zip", &study_zip("chest_normal")).await;
    assert_failure(&r, 429, "overloaded", "overloaded", false);
    assert_eq!(r.header("retry-after"), Some("3"));
    let r = http::post_file(gw.addr, "/predict_nifti", "x.nii", b"whatever").await;
    assert_failure(&r, 429, "overloaded", "overloaded", true);
    // health and liveness answer at once while the slot is taken
    let t = std::time::Instant::now();
    assert_eq!(http::get(gw.addr, "/health").await.status, 200);
    assert_eq!(http::get(gw.admin, "/live").await.status, 200);
    assert!(t.elapsed() < Duration::from_secs(1), "health took {:?}", t.elapsed());
    // the held study completes normally
    let v = assert_success(&held.finish().await);
    assert_eq!(v["pathology"], 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_answers_504() {
    let s = stack().await;
    let gw = s.gateway(gateway::Config { request_timeout: Duration::from_millis(800), ..s.gateway_config() }).await;
    let zip = study_zip("chest_normal");
    let held = HeldUpload::start(gw.addr, "/predict", "slow.zip", &zip, zip.len() / 3).await;
    let r = held.response_without_finishing(Duration::from_secs(10)).await;
    assert_failure(&r, 504, "timeout", "deadline_exceeded", false);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_service_down_fails_or_degrades_by_policy() {
    let s = stack().await;
    let down = format!("http://{}", closed_port());
    let mut upstreams = s.upstreams.clone();
    upstreams.mednext_url = down;
    let zip = study_zip("chest_abnormal");

    // policy fail (default): 503, and not ready
    let gw = s.gateway(gateway::Config { upstreams: upstreams.clone(), ..s.gateway_config() }).await;
    let r = http::post_file(gw.addr, "/predict", "a.zip", &zip).await;
    let v = assert_failure(&r, 503, "upstream_unavailable", "model_unavailable", false);
    assert!(v["error"].as_str().unwrap_or_default().contains("mednext"), "{v}");
    assert!(r.header("retry-after").is_some());
    gw.wait_ready(503, Duration::from_secs(10)).await;
    let ups = http::get(gw.admin, "/upstreams").await.json();
    let mednext = ups.as_array().expect("array").iter().find(|u| u["name"] == "mednext").expect("mednext listed").clone();
    assert_eq!(mednext["status"], "unreachable");
    gw.stop().await;

    // policy degrade: answered without mednext, which is named; ready with one model missing
    let gw = s.gateway(gateway::Config { upstreams, missing_model_policy: gateway::MissingModelPolicy::Degrade, ..s.gateway_config() }).await;
    gw.wait_ready(200, Duration::from_secs(10)).await;
    let r = http::post_file(gw.addr, "/predict", "a.zip", &zip).await;
    let v = assert_success(&r);
    assert_eq!(v["missing_models"], serde_json::json!(["mednext"]), "{v}");
    assert!(v["model_versions"].get("mednext").is_none());
    assert!(v["missing_features"].as_array().is_some_and(|f| !f.is_empty()), "the mednext features were filled: {v}");
    assert_eq!(gw.metric("ct_gateway_missing_models_total{model=\"mednext\"}").await, Some(1.0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_does_not_answer_in_time_fails_the_study() {
    let s = stack().await;
    let gw = s.gateway(gateway::Config { model_timeout: Duration::from_millis(1), ..s.gateway_config() }).await;
    let r = http::post_file(gw.addr, "/predict", "a.zip", &study_zip("chest_abnormal")).await;
    let v = assert_failure(&r, 503, "upstream_unavailable", "model_timeout", false);
    assert!(v["error"].as_str().unwrap_or_default().contains("did not answer within"), "{v}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_service_at_capacity_gives_429_with_retry_after() {
    let s = stack().await;
    // an fvlm service that admits one study at a time, with no queue
    let config = model_server::ServerConfig { concurrency: 1, queue_depth: 0, ..model_server::ServerConfig::default() };
    let fvlm = model_server::testing::spawn::<fvlm_svc::Fvlm>(&model_server::testing::demo_bundle("fvlm"), config).await;
    // another client holds the only slot: its Predict stream is open and sends nothing
    let mut other = fvlm.client().await;
    let holder = tokio::spawn(async move { other.predict(futures::stream::pending::<ct_proto::v1::VolumeChunk>()).await });
    let mut t = 0;
    while model_server::testing::metric(fvlm.admin, "ct_model_in_flight").await != Some(1.0) {
        t += 1;
        assert!(t < 200, "the holding call was never admitted");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // under either policy an overloaded model is not "missing": the client is told to retry
    for policy in [gateway::MissingModelPolicy::Fail, gateway::MissingModelPolicy::Degrade] {
        let upstreams = gateway::Upstreams { fvlm_url: format!("http://{}", fvlm.grpc), ..s.upstreams.clone() };
        let gw = s.gateway(gateway::Config { upstreams, missing_model_policy: policy, retry_after_secs: 3, ..s.gateway_config() }).await;
        let r = http::post_file(gw.addr, "/predict", "a.zip", &study_zip("chest_abnormal")).await;
        let v = assert_failure(&r, 429, "overloaded", "model_overloaded", false);
        assert!(v["error"].as_str().unwrap_or_default().contains("fvlm"), "{v}");
        assert_eq!(r.header("retry-after"), Some("3"));
        gw.stop().await;
    }
    let metrics = model_server::testing::http_get(fvlm.admin, "/metrics").await.1;
    assert!(metrics.lines().any(|l| l.starts_with("ct_model_requests_total{outcome=\"overloaded\"") && l.ends_with(" 2")), "{metrics}");

    // once the slot is free the same study goes through
    holder.abort();
    let upstreams = gateway::Upstreams { fvlm_url: format!("http://{}", fvlm.grpc), ..s.upstreams.clone() };
    let gw = s.gateway(gateway::Config { upstreams, ..s.gateway_config() }).await;
    let mut t = 0;
    while model_server::testing::metric(fvlm.admin, "ct_model_in_flight").await != Some(0.0) {
        t += 1;
        assert!(t < 200, "the aborted call still holds its slot");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let r = http::post_file(gw.addr, "/predict", "a.zip", &study_zip("chest_abnormal")).await;
    assert_eq!(assert_success(&r)["pathology"], 1);
    gw.stop().await;
    fvlm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_each_get_their_own_answer() {
    let s = stack().await;
    let gw = s.gateway(gateway::Config { max_in_flight: 6, ..s.gateway_config() }).await;
    let normal_nii = gzip(&study_nifti("chest_normal"));
    let abnormal_nii = gzip(&study_nifti("chest_abnormal"));
    // (endpoint, file name, bytes, expected study_uid, expected pathology)
    let mut cases = vec![
        ("/predict", "n.zip".to_string(), study_zip("chest_normal"), study_uid("chest_normal"), 0),
        ("/predict", "a.zip".to_string(), study_zip("chest_abnormal"), study_uid("chest_abnormal"), 1),
    ];
    for n in 0..4 {
        let (bytes, label) = if n % 2 == 0 { (abnormal_nii.clone(), 1) } else { (normal_nii.clone(), 0) };
        cases.push(("/predict_nifti", format!("vol_{n}.nii.gz"), bytes, format!("nifti_vol_{n}"), label));
    }
    let addr = gw.addr;
    let tasks: Vec<_> = cases
        .into_iter()
        .map(|(path, name, bytes, uid, label)| {
            tokio::spawn(async move {
                let r = http::post_file(addr, path, &name, &bytes).await;
                (uid, label, r)
            })
        })
        .collect();
    for t in tasks {
        let (uid, label, r) = t.await.expect("upload task");
        let v = assert_success(&r);
        assert_eq!(v["study_uid"], uid.as_str(), "{v}");
        assert_eq!(v["pathology"], label, "{uid}: {v}");
    }
    assert_eq!(gw.metric("ct_gateway_in_flight").await, Some(0.0));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_studies_in_flight() {
    let s = stack().await;
    let gw = s.gateway(s.gateway_config()).await;
    let zip = study_zip("chest_normal");
    let held = HeldUpload::start(gw.addr, "/predict", "n.zip", &zip, zip.len() / 2).await;
    let t = std::time::Instant::now();
    while gw.metric("ct_gateway_in_flight").await != Some(1.0) {
        assert!(t.elapsed() < Duration::from_secs(10), "the upload never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.shutdown.trigger();
    // new connections are refused (eventually) while the admitted study completes
    let v = assert_success(&held.finish().await);
    assert_eq!(v["pathology"], 0);
    tokio::time::timeout(Duration::from_secs(10), gw.task).await.expect("the gateway stopped").expect("task").expect("clean exit");
}
