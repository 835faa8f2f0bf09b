//! SNS signature verification against messages signed here with generated RSA keys (versions 1 and
//! 2), and the `/sns` endpoint of a running renderer service.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use renderer::deploy::aws::{DispatchConfig, DispatchMode};
use renderer::service::{RendererApp, RendererSettings};
use renderer::sns::{SnsError, Verifier};
use renderer::{
    LocalBodyStore, Mailbox, RecipientData, RenderInput, RenderJob, RenderSource, Renderer,
    SourceError, TemplateSource,
};
use serde_json::{json, Value};

#[path = "common/sns_signing.rs"]
mod sns_signing;
use sns_signing::{fetcher, keys, sign_with, signed, TableFetcher, CERT_URL};

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:render-jobs";

fn notification(message: &str, id: &str) -> Value {
    json!({
        "Type": "Notification",
        "MessageId": id,
        "TopicArn": TOPIC,
        "Subject": "render",
        "Message": message,
        "Timestamp": "2026-11-22T10:00:00.000Z",
        "SignatureVersion": "2",
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    })
}

fn confirmation(subscribe_url: &str) -> Value {
    json!({
        "Type": "SubscriptionConfirmation",
        "MessageId": "c-1",
        "Token": "2336412f37",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic.",
        "SubscribeURL": subscribe_url,
        "Timestamp": "2026-11-22T10:00:00.000Z",
        "SignatureVersion": "2",
        "SigningCertURL": CERT_URL,
    })
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn verifier(f: Arc<TableFetcher>) -> Verifier {
    Verifier::new([TOPIC.to_string()], true, f)
}

#[tokio::test]
async fn both_signature_versions_verify_and_certificates_are_fetched_once() {
    let f = fetcher();
    let v = verifier(f.clone());
    let mut v1 = notification("{\"campaign_id\":\"c\",\"batch\":0}", "m-1");
    v1["SignatureVersion"] = "1".into();
    let v1 = signed(v1);
    let v2 = signed(notification("{\"campaign_id\":\"c\",\"batch\":1}", "m-2"));
    assert_eq!(v.check(&bytes(&v1)).await.unwrap().message_id, "m-1");
    assert_eq!(v.check(&bytes(&v2)).await.unwrap().message_id, "m-2");
    let mut no_subject = notification("x", "m-3");
    no_subject.as_object_mut().unwrap().remove("Subject");
    v.check(&bytes(&signed(no_subject))).await.unwrap();
    v.check(&bytes(&signed(confirmation(
        "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
    ))))
    .await
    .unwrap();
    assert_eq!(
        f.fetches.load(Ordering::SeqCst),
        1,
        "the certificate is cached"
    );
}

#[tokio::test]
async fn forged_or_misdirected_messages_are_refused() {
    let f = fetcher();
    let v = verifier(f.clone());
    let good = signed(notification("{\"campaign_id\":\"c\",\"batch\":0}", "m-1"));

    let mut tampered = good.clone();
    tampered["Message"] = "{\"campaign_id\":\"other\",\"batch\":0}".into();
    assert_eq!(
        v.check(&bytes(&tampered)).await,
        Err(SnsError::BadSignature)
    );

    let mut subject_dropped = good.clone();
    subject_dropped.as_object_mut().unwrap().remove("Subject");
    assert_eq!(
        v.check(&bytes(&subject_dropped)).await,
        Err(SnsError::BadSignature)
    );

    let mut v1_claimed = good.clone();
    v1_claimed["SignatureVersion"] = "1".into(); // a v2 signature presented as v1
    assert_eq!(
        v.check(&bytes(&v1_claimed)).await,
        Err(SnsError::BadSignature)
    );

    let mut other_key = notification("{}", "m-2");
    sign_with(&mut other_key, &keys().other);
    assert_eq!(
        v.check(&bytes(&other_key)).await,
        Err(SnsError::BadSignature)
    );

    for url in [
        "https://sns.us-east-1.amazonaws.com.attacker.example/cert.pem",
        "https://attacker.example/SimpleNotificationService-test.pem",
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.txt",
    ] {
        let mut m = notification("{}", "m-3");
        m["SigningCertURL"] = url.into();
        let m = signed(m);
        assert!(
            matches!(v.check(&bytes(&m)).await, Err(SnsError::CertUrl(_))),
            "{url}"
        );
    }

    let mut v3 = notification("{}", "m-4");
    v3["SignatureVersion"] = "3".into();
    let v3 = signed(v3);
    assert_eq!(
        v.check(&bytes(&v3)).await,
        Err(SnsError::UnknownVersion("3".into()))
    );

    let mut stranger = notification("{}", "m-5");
    stranger["TopicArn"] = "arn:aws:sns:us-east-1:999999999999:other".into();
    let stranger = signed(stranger);
    assert!(matches!(
        v.check(&bytes(&stranger)).await,
        Err(SnsError::UnexpectedTopic(_))
    ));

    let mut unsigned = notification("{}", "m-6");
    unsigned.as_object_mut().unwrap().remove("SignatureVersion");
    assert!(v.check(&bytes(&unsigned)).await.is_err(), "unsigned");
    assert!(matches!(
        v.check(b"not json").await,
        Err(SnsError::Malformed(_))
    ));
    let mut no_token =
        confirmation("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription");
    no_token.as_object_mut().unwrap().remove("Token");
    assert!(matches!(
        v.check(&bytes(&no_token)).await,
        Err(SnsError::Malformed(_))
    ));
    assert_eq!(
        f.fetches.load(Ordering::SeqCst),
        1,
        "nothing is fetched for refused URLs, versions or topics"
    );
}

#[tokio::test]
async fn with_verification_off_only_the_topic_is_checked() {
    let v = Verifier::new([TOPIC.to_string()], false, fetcher());
    let mut unsigned = notification("{}", "m-1");
    unsigned["Signature"] = "EXAMPLE".into();
    v.check(&bytes(&unsigned)).await.unwrap();
    unsigned["TopicArn"] = "arn:aws:sns:us-east-1:999999999999:other".into();
    assert!(matches!(
        v.check(&bytes(&unsigned)).await,
        Err(SnsError::UnexpectedTopic(_))
    ));
}

/// A conductor stand-in: hands out one recipient per batch and records what was reported.
#[derive(Default)]
struct FakeSource {
    loads: Mutex<Vec<RenderJob>>,
    rendered: Mutex<Vec<(RenderJob, String)>>,
}

#[async_trait]
impl RenderSource for FakeSource {
    async fn load(&self, job: &RenderJob) -> Result<RenderInput, SourceError> {
        self.loads.lock().unwrap().push(job.clone());
        Ok(RenderInput {
            limits: Default::default(),
            track: Default::default(),
            from: Mailbox {
                email: "news@example.com".into(),
                name: None,
            },
            reply_to: None,
            template: TemplateSource {
                subject: "Hi {{name}}".into(),
                html: "<p>Hello {{name}}</p>".into(),
                text: None,
                partials: Default::default(),
            },
            recipients: vec![RecipientData {
                id: 1,
                email: "ann@example.com".into(),
                name: Some("Ann".into()),
                data: json!({}),
                unsubscribe: None,
                web_url: None,
                tracking: None,
            }],
        })
    }

    async fn rendered(
        &self,
        job: &RenderJob,
        key: &str,
        _failed: Vec<(i64, String)>,
    ) -> Result<(), SourceError> {
        self.rendered
            .lock()
            .unwrap()
            .push((job.clone(), key.to_string()));
        Ok(())
    }
}

struct Service {
    url: String,
    source: Arc<FakeSource>,
    _bodies: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn service(verify: bool) -> Service {
    let bodies = tempfile::tempdir().unwrap();
    let source = Arc::new(FakeSource::default());
    let renderer = Arc::new(Renderer::new(
        source.clone(),
        Arc::new(LocalBodyStore::new(bodies.path())),
    ));
    let settings = RendererSettings {
        listen: "127.0.0.1:0".into(),
        workers: 1,
        verify_signatures: verify,
        public_url: None,
    };
    let mut dispatch = DispatchConfig {
        mode: DispatchMode::Sns,
        ..Default::default()
    };
    dispatch.sns.topic_arn = TOPIC.into();
    let app = RendererApp::build(&settings, &dispatch, renderer, fetcher())
        .await
        .unwrap();
    let url = format!("http://{}/sns", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run_until(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Service {
        url,
        source,
        _bodies: bodies,
        stop,
        task,
    }
}

async fn post(url: &str, body: &Value) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "text/plain; charset=UTF-8")
        .header("x-amz-sns-message-type", body["Type"].as_str().unwrap())
        .body(bytes(body))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn wait_rendered(source: &FakeSource, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while source.rendered.lock().unwrap().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not rendered in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_endpoint_renders_genuine_jobs_once_and_refuses_forgeries() {
    let svc = service(true).await;
    let job = json!({"campaign_id": "c1", "batch": 4}).to_string();
    let genuine = signed(notification(&job, "m-1"));
    assert_eq!(post(&svc.url, &genuine).await, (200, "queued".into()));
    assert_eq!(post(&svc.url, &genuine).await, (200, "duplicate".into()));
    wait_rendered(&svc.source, 1).await;

    let mut forged = genuine.clone();
    forged["MessageId"] = "m-2".into();
    forged["Message"] = json!({"campaign_id": "c1", "batch": 5}).to_string().into();
    assert_eq!(post(&svc.url, &forged).await.0, 403);

    // A forged confirmation must not make us call anyone.
    let trap = wiremock::MockServer::start().await;
    let mut forged_confirm = signed(confirmation(
        "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
    ));
    forged_confirm["SubscribeURL"] = format!("{}/confirm", trap.uri()).into();
    assert_eq!(post(&svc.url, &forged_confirm).await.0, 403);
    assert_eq!(
        post(&svc.url, &json!({"Type": "Notification"})).await.0,
        400
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        *svc.source.loads.lock().unwrap(),
        vec![RenderJob {
            campaign_id: "c1".into(),
            batch: 4
        }],
        "the genuine job once, nothing else"
    );
    assert_eq!(
        svc.source.rendered.lock().unwrap()[0].1,
        "campaigns/c1/batches/4.batch.zst"
    );
    assert!(trap.received_requests().await.unwrap().is_empty());
    svc.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), svc.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn an_emulator_subscription_is_confirmed_by_its_url() {
    let svc = service(false).await;
    let sns = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path("/confirm"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .expect(1)
        .mount(&sns)
        .await;
    let confirm = confirmation(&format!("{}/confirm", sns.uri()));
    assert_eq!(post(&svc.url, &confirm).await, (200, "confirmed".into()));
    sns.verify().await;
    svc.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), svc.task)
        .await
        .unwrap()
        .unwrap();
}
