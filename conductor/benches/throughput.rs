//! How close the send path comes to the sink's own ceiling: an uncapped campaign against nginx on
//! loopback answering like Mailgun, then `wrk` against the same nginx, in one run.
//!
//! nginx (one process, `return 200` with Mailgun's JSON, basic auth required, an access log
//! of each request's arrival time) is the provider. The conductor sends the demo campaign through
//! it with a cap far above what it can reach; the bench then reads the log and prints the campaign's
//! send-phase rate (messages the sink accepted, first arrival to last), and after the campaign
//! `wrk` POSTs bodies of the campaign's mean request size to the same URL on the same nginx. The
//! ratio of the two says how much of the machine the send path leaves on the table: the sink and
//! the sender share the machine's cores in the campaign, as wrk and nginx do in wrk's run.
//!
//! ```text
//! cargo bench -p conductor --bench throughput                    # embedded sender, 20,000 recipients
//! cargo bench -p conductor --bench throughput -- 20000 --senders 2
//! cargo bench -p conductor --bench throughput -- 20000 --lanes 4 --concurrency 64 --lease-size 500
//! ```
//! The `[sender]` settings (`--lanes`, `--concurrency`, `--lease-size`, `--max-lease-size`) apply to
//! the embedded sender.
//! With `--senders N` the conductor runs on PostgreSQL (`TEST_POSTGRES_URL`, default the local `test`
//! database, in a fresh schema) with N `sender` processes from `target/release/sender` (build it
//! first: `cargo build --release --workspace`). Needs `nginx` and `wrk` on the PATH (Debian's
//! packages of those names); loopback only, it stops by itself.

#[path = "support/topology.rs"]
mod topology;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conductor::config::Config;
use sender::SystemClock;

/// The conductor binary's allocator, so the bench measures what ships (the system allocator's
/// per-thread arenas cost the send path about a fifth of its CPU in malloc and free).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SINK_KEY: &str = "nginx-sink-key";
/// Far above anything one machine reaches, so the governor never holds a send back.
const UNCAPPED: u32 = 100_000_000;
const WRK_SECONDS: u64 = 5;
const WRK_CONNECTIONS: u32 = 64;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let senders = args
        .iter()
        .position(|a| a == "--senders")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0usize);
    let setting = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse::<u32>().ok())
    };
    let recipients = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || !args[i - 1].starts_with("--"))
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(20_000usize);

    let dir = tempfile::tempdir().expect("temp dir");
    let nginx = Nginx::start(dir.path());
    let base = format!("http://127.0.0.1:{}", nginx.port);

    let mut config = Config::default();
    config.store.url = format!("sqlite://{}", dir.path().join("bench.db").display());
    config.bodies.url = format!("file://{}", dir.path().join("bodies").display());
    config.campaigns.templates_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../templates");
    config.governor.per_minute = UNCAPPED;
    if let Some(n) = setting("--lanes") {
        config.sender.lanes = n;
    }
    if let Some(n) = setting("--concurrency") {
        config.sender.concurrency = n;
    }
    if let Some(n) = setting("--lease-size") {
        config.sender.lease_size = n;
    }
    if let Some(n) = setting("--max-lease-size") {
        config.sender.max_lease_size = n;
    }
    config.provider.kind = conductor::config::ProviderKind::Mailgun;
    config.provider.mailgun.base_url = base.clone();
    config.provider.mailgun.domain = "mg.example.com".into();
    config.provider.mailgun.api_key = Some(SINK_KEY.into());

    let started_ms = now_ms();
    if senders == 0 {
        let s = &config.sender;
        println!(
            "embedded sender, SQLite: {recipients} recipients, uncapped; {} lanes of {} requests in flight, {} to {} per lease",
            s.lanes, s.concurrency, s.lease_size, s.max_lease_size
        );
        let summary =
            conductor::cli::demo::run(config.clone(), None, recipients, Arc::new(SystemClock))
                .await
                .expect("demo run");
        summary.print(&config);
    } else {
        println!("{senders} sender processes, PostgreSQL: {recipients} recipients, uncapped");
        let sink = topology::Sink {
            url: &base,
            key: SINK_KEY,
        };
        topology::distributed(config, dir.path(), recipients, (senders, 0), sink).await;
    }
    let ended_ms = now_ms();

    let campaign = nginx.arrivals();
    let accepted: Vec<&Arrival> = campaign.iter().filter(|a| a.status == 200).collect();
    assert!(
        accepted.len() >= recipients,
        "the sink accepted {} of {recipients} messages",
        accepted.len()
    );
    let first = accepted.iter().map(|a| a.at_ms).fold(f64::MAX, f64::min);
    let last = accepted.iter().map(|a| a.at_ms).fold(0.0, f64::max);
    let send_phase = accepted.len() as f64 / ((last - first) / 1000.0).max(0.001);
    let end_to_end = accepted.len() as f64 / ((last - started_ms) / 1000.0).max(0.001);
    let mean_request =
        accepted.iter().map(|a| a.request_bytes).sum::<u64>() / accepted.len() as u64;
    println!(
        "\nsink: {} requests ({} accepted), mean request {mean_request} bytes; first to last arrival {:.2} s",
        campaign.len(),
        accepted.len(),
        (last - first) / 1000.0
    );
    println!(
        "campaign: {send_phase:.0} msgs/s in the send phase (first to last arrival), \
         {end_to_end:.0} msgs/s end to end (from the create, {:.1} s in all)",
        (ended_ms - started_ms) / 1000.0
    );

    // Rendering runs beside the first part of the send phase (uncapped, the render window is the
    // whole campaign): the rate in each half says how much of the gap is the send path's own.
    let mut at: Vec<f64> = accepted.iter().map(|a| a.at_ms).collect();
    at.sort_by(f64::total_cmp);
    let half = at.len() / 2;
    let rate = |xs: &[f64]| match (xs.first(), xs.last()) {
        (Some(a), Some(b)) => xs.len() as f64 / ((b - a) / 1000.0).max(0.001),
        _ => 0.0,
    };
    println!(
        "send phase by halves: first {:.0} msgs/s, second {:.0} msgs/s",
        rate(&at[..half]),
        rate(&at[half..])
    );

    let wrk = wrk(dir.path(), &base, mean_request);
    println!(
        "wrk: {wrk:.0} req/s ({WRK_CONNECTIONS} connections, 2 threads, {WRK_SECONDS} s, bodies of the campaign's mean request size)"
    );
    println!(
        "ratio: send phase / wrk = {:.3}  (end to end / wrk = {:.3})",
        send_phase / wrk,
        end_to_end / wrk
    );
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
        * 1000.0
}

struct Arrival {
    at_ms: f64,
    status: u16,
    request_bytes: u64,
}

/// nginx under a prefix of the bench's own temp dir, killed when dropped.
struct Nginx {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Nginx {
    fn start(dir: &Path) -> Nginx {
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().unwrap().port()
        };
        let log = prefix.join("logs/arrivals.log");
        // Mailgun's answer to an accepted message; a request without credentials gets its 401.
        let conf = format!(
            r#"daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format arrival '$msec $status $request_length $content_length';
    access_log {log} arrival buffer=256k flush=1s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location ~ ^/v3/[^/]+/messages$ {{
            client_max_body_size 8m;
            client_body_buffer_size 1m;
            default_type application/json;
            if ($http_authorization = "") {{
                return 401 '{{"message":"Invalid private key"}}';
            }}
            return 200 '{{"id":"<$request_id@mg.example.com>","message":"Queued. Thank you."}}';
        }}
        location / {{
            return 404;
        }}
    }}
}}
"#,
            prefix = prefix.display(),
            log = log.display(),
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx is not installed: apt-get install nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { child, port, log }
    }

    /// Every request logged so far; waits out the log's one-second flush first.
    fn arrivals(&self) -> Vec<Arrival> {
        std::thread::sleep(Duration::from_millis(1_500));
        std::fs::read_to_string(&self.log)
            .expect("the access log")
            .lines()
            .filter_map(|line| {
                let mut f = line.split(' ');
                Some(Arrival {
                    at_ms: f.next()?.parse::<f64>().ok()? * 1000.0,
                    status: f.next()?.parse().ok()?,
                    request_bytes: f.next()?.parse::<u64>().ok()?
                        + f.next()?.parse::<u64>().unwrap_or(0),
                })
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// wrk's requests per second against the sink's messages URL, POSTing a form body that makes each
/// request `request_bytes` long.
fn wrk(dir: &Path, base: &str, request_bytes: u64) -> f64 {
    // The request line and headers wrk sends come to about 200 bytes.
    let body_len = request_bytes.saturating_sub(200).max(1) as usize;
    let body = format!("to=a%40example.com&html={}", "x".repeat(body_len));
    let script = dir.join("post.lua");
    let mut f = std::fs::File::create(&script).unwrap();
    writeln!(
        f,
        "wrk.method = \"POST\"\nwrk.body = \"{body}\"\n\
         wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
         wrk.headers[\"Authorization\"] = \"Basic YXBpOm5naW54LXNpbmsta2V5\""
    )
    .unwrap();
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{WRK_CONNECTIONS}")])
        .arg(format!("-d{WRK_SECONDS}s"))
        .arg("-s")
        .arg(&script)
        .arg(format!("{base}/v3/mg.example.com/messages"))
        .output()
        .expect("wrk is not installed: apt-get install wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let non_2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .map(str::to_string);
    assert!(
        non_2xx.is_none(),
        "wrk got errors from the sink: {non_2xx:?}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no rate:\n{text}"))
}
