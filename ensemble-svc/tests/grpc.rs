//! The gRPC EnsembleService on 127.0.0.1 port 0 (real tonic server, real client): decisions equal
//! the Python parity fixtures, typed errors for bad requests, missing features counted in the
//! metrics, health served.

mod common;

use common::{cases, parity_bundle, strings};
use ct_proto::v1::ensemble_service_client::EnsembleServiceClient;
use ct_proto::v1::{CombineRequest, Score, Scores};
use ensemble_svc::bundle::Bundle;
use ensemble_svc::ensemble::{Ensemble, Options};
use ensemble_svc::features::ScoreSet;
use ensemble_svc::service::{EnsembleHandle, EnsembleSvc, Metrics, run};
use tonic::transport::Channel;

async fn start() -> (Channel, prometheus::Registry, tokio::sync::oneshot::Sender<()>) {
    let (handle, loaded) = EnsembleHandle::spawn(|| Ensemble::from_bundle(&Bundle::load(&parity_bundle())?, &Options::default())).unwrap();
    assert_eq!(loaded.n_features, 165);
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run(listener, EnsembleSvc::new(handle, metrics), async {
        let _ = rx.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    (channel, registry, tx)
}

fn request(study_uid: &str, scores: &ScoreSet, missing_models: &[&str]) -> CombineRequest {
    let json = scores.to_json();
    let models = json
        .as_object()
        .unwrap()
        .iter()
        .map(|(model, labels)| Scores {
            model: model.clone(),
            model_version: "test".into(),
            scores: labels.as_object().unwrap().iter().map(|(l, v)| Score { label: l.clone(), value: v.as_f64().unwrap() }).collect(),
            timings_ms: Default::default(),
        })
        .collect();
    CombineRequest { study_uid: study_uid.into(), models, missing_models: missing_models.iter().map(|s| s.to_string()).collect() }
}

fn counter(registry: &prometheus::Registry, name: &str, label: (&str, &str)) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().to_vec())
        .filter(|m| m.get_label().iter().any(|l| l.name() == label.0 && l.value() == label.1))
        .map(|m| m.get_counter().get_value())
        .sum()
}

#[tokio::test]
async fn combine_answers_like_python_and_reports_missing_features() {
    let (channel, registry, stop) = start().await;
    let mut client = EnsembleServiceClient::new(channel.clone());
    for (name, scores, case) in cases() {
        let d = client.combine(request(&format!("1.2.3.{name}"), &scores, &[])).await.unwrap().into_inner();
        let e = &case["expected"];
        assert!((d.probability_of_pathology - e["probability_of_pathology"].as_f64().unwrap()).abs() <= 1e-9, "{name}");
        assert!((d.probability_of_pathology_thoracic.unwrap() - e["probability_of_pathology_thoracic"].as_f64().unwrap()).abs() <= 1e-9, "{name}");
        assert_eq!(d.pathology, u32::from(d.probability_of_pathology >= 0.59));
        assert_eq!(d.pathology_thoracic, Some(u32::from(d.probability_of_pathology_thoracic.unwrap() >= 0.5)));
        assert_eq!(d.top_pathologies, strings(&e["top_pathologies"]), "{name}: returned whatever the decision");
        assert_eq!(d.missing_features, strings(&e["missing_features"]), "{name}");
        assert_eq!((d.threshold, d.threshold_thoracic), (0.59, Some(0.5)));
    }

    // a model the gateway says is missing: its features are reported and counted
    let (_, mut scores, _) = cases().remove(0);
    let mut json = scores.to_json();
    json.as_object_mut().unwrap().remove("diffusion");
    scores = ScoreSet::from_json(&json).unwrap();
    let feature = ("feature", "diffusion_classifier_max_probability");
    let (f0, m0) = (counter(&registry, "ct_ensemble_missing_features_total", feature), counter(&registry, "ct_ensemble_missing_models_total", ("model", "diffusion")));
    assert_eq!(f0, 2.0, "two parity cases lack diffusion scores");
    let d = client.combine(request("1.2.3.4", &scores, &["diffusion"])).await.unwrap().into_inner();
    assert_eq!(d.missing_models, vec!["diffusion".to_string()]);
    assert_eq!(d.missing_features.len(), 3);
    assert_eq!(counter(&registry, "ct_ensemble_missing_features_total", feature), f0 + 1.0);
    assert_eq!(counter(&registry, "ct_ensemble_missing_models_total", ("model", "diffusion")), m0 + 1.0);
    assert!(counter(&registry, "ct_ensemble_requests_total", ("outcome", "ok")) >= 13.0);

    // health: SERVING
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health.check(tonic_health::pb::HealthCheckRequest { service: "ct.v1.EnsembleService".into() }).await.unwrap();
    assert_eq!(r.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let _ = stop.send(());
}

#[tokio::test]
async fn bad_requests_get_typed_statuses_and_the_service_keeps_serving() {
    let (channel, registry, stop) = start().await;
    let mut client = EnsembleServiceClient::new(channel);
    let (_, scores, _) = cases().remove(0);
    let good = request("1.2.3", &scores, &[]);
    let mut unknown = good.clone();
    unknown.models[0].model = "radiologist".into();
    let mut twice = good.clone();
    twice.models.push(good.models[0].clone());
    let mut nan = good.clone();
    nan.models[1].scores[0].value = f64::NAN;
    let both = request("1.2.3", &scores, &["ctclip"]);
    for (what, req) in [("unknown model", unknown), ("model twice", twice), ("NaN score", nan), ("given and missing", both)] {
        let s = client.combine(req).await.expect_err(what);
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{what}");
        assert_eq!(ct_proto::errors::error_type(&s).as_deref(), Some("invalid_scores"), "{what}");
    }
    assert_eq!(counter(&registry, "ct_ensemble_requests_total", ("outcome", "invalid_scores")), 4.0);
    assert!(client.combine(good).await.is_ok());
    let _ = stop.send(());
}
