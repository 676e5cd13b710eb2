//! TLS session resumption and certificate expiry, seen from real clients: `openssl s_client`
//! saves a session (`-sess_out`) and offers it again (`-sess_in`), and its "Reused" or "New"
//! is the verdict. TLS 1.3 tickets, TLS 1.2 tickets and TLS 1.2 session ids, each with the
//! listener's tickets and cache on and off; sessions survive a reload; two gateways sharing
//! a real redis-server resume each other's sessions, and a ticket from before two rotations
//! of the cluster's keys is refused. Expiry: check-config and the metric for openssl-made
//! certificates with days left. Loopback only; every wait is bounded.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::proxy_support::{check_config, curl, free_port, pki::CertDir};
use gateway_tests::{
    Gateway,
    redis::{RedisServer, redis_available},
    upstream::Upstream,
};

const NAME: &str = "resume.test";
const WAIT: Duration = Duration::from_secs(20);

/// A self-signed certificate for [`NAME`], valid for `days` (0: expired a second later).
struct Cert {
    dir: CertDir,
}

impl Cert {
    fn new(days: u32) -> Cert {
        let dir = CertDir::new("gwresume-");
        dir.ec_p256_key("key.pem");
        let subject = format!("/CN={NAME}");
        dir.openssl(&[
            "req", "-new", "-key", "key.pem", "-subj", &subject, "-out", "cert.csr",
        ]);
        dir.extensions("cert", &format!("DNS:{NAME}"), None);
        // `x509 -req` (unlike `req -x509`) takes `-days 0`.
        dir.openssl(&[
            "x509",
            "-req",
            "-in",
            "cert.csr",
            "-signkey",
            "key.pem",
            "-days",
            &days.to_string(),
            "-extfile",
            "cert.ext",
            "-out",
            "cert.pem",
        ]);
        Cert { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path(file)
    }

    fn file(&self, file: &str) -> String {
        self.dir.path_str(file)
    }
}

/// A config with one https listener named `tls` on `port` serving `cert` in front of
/// `upstream`; `tls_extra` goes into `[listeners.tls]`, `rest` at the end.
fn config(port: u16, cert: &Cert, tls_extra: &str, upstream: &Upstream, rest: &str) -> String {
    format!(
        "[admin]\nsocket = \"{{admin_socket}}\"\n[xdp]\nmode = \"off\"\n\
         [access_log]\nenabled = false\n{rest}\n\
         [[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:{port}\"\nprotocol = \"https\"\n\
         [listeners.tls]\n{tls_extra}\n\
         [[listeners.tls.certificates]]\ncert = {:?}\nkey = {:?}\n\
         [[upstreams]]\nname = \"echo\"\ntargets = [{{ address = \"{}\" }}]\n\
         [[routes]]\nname = \"all\"\nupstream = \"echo\"\n",
        cert.file("cert.pem"),
        cert.file("key.pem"),
        upstream.address(),
    )
}

/// How a client offers to resume.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// TLS 1.3: a ticket (stateless, or a session id in it when tickets are off).
    Tls13,
    /// TLS 1.2 offering the session ticket extension.
    Tls12Ticket,
    /// TLS 1.2 without tickets: the session id cache.
    Tls12SessionId,
}

impl Client {
    const ALL: [Client; 3] = [Client::Tls13, Client::Tls12Ticket, Client::Tls12SessionId];

    fn args(self) -> &'static [&'static str] {
        match self {
            Client::Tls13 => &["-tls1_3"],
            Client::Tls12Ticket => &["-tls1_2"],
            Client::Tls12SessionId => &["-tls1_2", "-no_ticket"],
        }
    }
}

/// One `openssl s_client` connection to `port` that sends a request and reads the answer
/// (TLS 1.3 tickets come after the handshake); `session` is written (`-sess_out`) or
/// offered (`-sess_in`). Returns "Reused" or "New" and the output.
fn s_client(port: u16, cert: &Cert, client: Client, session: Session<'_>) -> (String, String) {
    let request = cert.path("request");
    std::fs::write(
        &request,
        format!("GET /resume HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    let (flag, file) = match session {
        Session::Save(file) => ("-sess_out", file),
        Session::Offer(file) => ("-sess_in", file),
    };
    let output = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-ign_eof", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", NAME, "-CAfile", &cert.file("cert.pem")])
        .args(client.args())
        .arg(flag)
        .arg(file)
        .stdin(std::fs::File::open(&request).unwrap())
        .output()
        .expect("running openssl s_client");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && text.contains("HTTP/1.1 200"),
        "s_client {client:?} failed:\n{text}"
    );
    let verdict = text
        .lines()
        .find_map(|line| {
            let line = line.trim_start();
            ["Reused", "New"]
                .into_iter()
                .find(|verdict| line.starts_with(&format!("{verdict}, TLSv1")))
        })
        .unwrap_or_else(|| panic!("no Reused/New line:\n{text}"));
    (verdict.to_owned(), text)
}

enum Session<'a> {
    Save(&'a Path),
    Offer(&'a Path),
}

/// A fresh session from `port` saved to `file`: its own handshake is a full one.
fn save_session(port: u16, cert: &Cert, client: Client, file: &Path) {
    let (verdict, text) = s_client(port, cert, client, Session::Save(file));
    assert_eq!(verdict, "New", "{text}");
    assert!(std::fs::metadata(file).is_ok_and(|m| m.len() > 0), "{text}");
}

/// Offers the session in `file` to `port` once: "Reused" or "New".
fn offer(port: u16, cert: &Cert, client: Client, file: &Path) -> String {
    s_client(port, cert, client, Session::Offer(file)).0
}

/// Offers the session until the verdict is `wanted` (another node adopting the cluster's
/// keys takes up to a second); panics after [`WAIT`].
fn offer_until(port: u16, cert: &Cert, client: Client, file: &Path, wanted: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let verdict = offer(port, cert, client, file);
        if verdict == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{client:?}: still {verdict}, never {wanted}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sessions_resume_by_ticket_and_by_session_id_as_configured() {
    let cert = Cert::new(30);
    let upstream = Upstream::start("echo");
    use Client::*;
    // (the listener's tls settings, and for each client its first and second offer of the
    // same saved session)
    type Expected = [(Client, &'static str, &'static str); 3];
    let all_reused: Expected = [
        (Tls13, "Reused", "Reused"),
        (Tls12Ticket, "Reused", "Reused"),
        (Tls12SessionId, "Reused", "Reused"),
    ];
    let cases: [(&str, Expected); 5] = [
        ("", all_reused),
        (
            "session_tickets = { rotate = \"1h\" }\nsession_cache = { size = 16 }",
            all_reused,
        ),
        // Tickets off: TLS 1.2 resumes from the cache; TLS 1.3 too, once per session (a
        // stateful TLS 1.3 ticket is taken from the cache: no replay).
        (
            "session_tickets = { enabled = false }",
            [
                (Tls13, "Reused", "New"),
                (Tls12Ticket, "Reused", "Reused"),
                (Tls12SessionId, "Reused", "Reused"),
            ],
        ),
        // The cache off: tickets only.
        (
            "session_cache = { size = 0 }",
            [
                (Tls13, "Reused", "Reused"),
                (Tls12Ticket, "Reused", "Reused"),
                (Tls12SessionId, "New", "New"),
            ],
        ),
        // Both off: every handshake is a full one.
        (
            "session_tickets = { enabled = false }\nsession_cache = { size = 0 }",
            [
                (Tls13, "New", "New"),
                (Tls12Ticket, "New", "New"),
                (Tls12SessionId, "New", "New"),
            ],
        ),
    ];
    for (settings, expected) in cases {
        let port = free_port();
        let gateway = Gateway::start(None, &config(port, &cert, settings, &upstream, ""));
        for (client, first, again) in expected {
            let file = cert.path("session.pem");
            save_session(port, &cert, client, &file);
            for (offer_number, wanted) in [first, again].into_iter().enumerate() {
                assert_eq!(
                    offer(port, &cert, client, &file),
                    wanted,
                    "{settings:?} {client:?} offer {offer_number}"
                );
            }
        }
        drop(gateway);
    }
}

#[test]
fn another_gateways_sessions_are_full_handshakes() {
    let cert = Cert::new(30);
    let upstream = Upstream::start("echo");
    let (one, other) = (free_port(), free_port());
    let _one = Gateway::start(None, &config(one, &cert, "", &upstream, ""));
    let _other = Gateway::start(None, &config(other, &cert, "", &upstream, ""));
    for client in Client::ALL {
        let file = cert.path("session.pem");
        save_session(one, &cert, client, &file);
        assert_eq!(offer(other, &cert, client, &file), "New", "{client:?}");
        assert_eq!(offer(one, &cert, client, &file), "Reused", "{client:?}");
    }
}

#[test]
fn sessions_resume_across_a_reload() {
    let cert = Cert::new(30);
    let upstream = Upstream::start("echo");
    let port = free_port();
    let settings = "session_tickets = { rotate = \"1h\" }";
    let gateway = Gateway::start(None, &config(port, &cert, settings, &upstream, ""));
    let files: Vec<(Client, PathBuf)> = Client::ALL
        .iter()
        .enumerate()
        .map(|(index, client)| (*client, cert.path(&format!("session{index}.pem"))))
        .collect();
    for (client, file) in &files {
        save_session(port, &cert, *client, file);
    }
    // A reload that changes the rotation: the keys and the cache stay.
    let path = gateway.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("rotate = \"1h\"", "rotate = \"2h\"")).unwrap();
    let reloaded = gateway.cli(&["reload"]);
    assert!(reloaded.status.success(), "{reloaded:?}");
    assert!(gateway.log().contains("TLS certificates reloaded"));
    for (client, file) in &files {
        assert_eq!(offer(port, &cert, *client, file), "Reused", "{client:?}");
    }
}

#[test]
fn rotate_out_of_range_is_refused_naming_the_key() {
    let cert = Cert::new(30);
    let upstream = Upstream::start("echo");
    let cases = [
        (
            "session_tickets = { rotate = \"0s\" }",
            "session_tickets.rotate: must be longer than 0s",
        ),
        (
            "session_tickets = { rotate = \"500ms\" }",
            "session_tickets.rotate: must be from 1s to 84h",
        ),
        (
            "session_tickets = { rotate = \"85h\" }",
            "session_tickets.rotate: must be from 1s to 84h",
        ),
        (
            "session_tickets = { rotate = \"soon\" }",
            "session_tickets.rotate: \"soon\" is not a duration",
        ),
        ("session_tickets = { rotate = 60 }", "session_tickets"),
        (
            "session_tickets = { every = \"1h\" }",
            "unknown field `every`",
        ),
        ("session_cache = { size = -1 }", "session_cache"),
        (
            "session_cache = { entries = 10 }",
            "unknown field `entries`",
        ),
    ];
    for (settings, expected) in cases {
        let (ok, text) = check_config(
            cert.dir.dir(),
            &config(free_port(), &cert, settings, &upstream, ""),
        );
        assert!(!ok, "{settings} was accepted:\n{text}");
        assert!(
            text.contains(expected),
            "{settings}: wanted {expected:?} in\n{text}"
        );
    }
}

/// Waits (bounded) until `redis-cli HGET key field` is not `than` (nor empty); returns it.
fn field_changed(redis: &RedisServer, key: &str, field: &str, than: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = redis.cli(&["HGET", key, field]);
        if !value.is_empty() && value != than {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{key} {field} never changed from {than:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Makes the cluster's ticket keys due for one rotation (not two) by moving `rotated_at`
/// back, and waits until a node has rotated them.
fn force_rotation(redis: &RedisServer, key: &str, rotation: u64) {
    let current = redis.cli(&["HGET", key, "current"]);
    let now: u64 = redis
        .cli(&["TIME"])
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let due = (now - rotation - 1).to_string();
    redis.cli(&["HSET", key, "rotated_at", &due]);
    field_changed(redis, key, "current", &current);
}

#[test]
fn two_nodes_resume_each_others_sessions_until_two_rotations_have_passed() {
    if !redis_available("two_nodes_resume_each_others_sessions_until_two_rotations_have_passed") {
        return;
    }
    let redis = RedisServer::on_loopback();
    let cert = Cert::new(30);
    let upstream = Upstream::start("echo");
    let prefix = format!("gwresume{}", std::process::id());
    let node = |port: u16, name: &str| {
        let cluster = format!(
            "[cluster]\nredis = \"{}\"\nnode = \"{name}\"\nkey_prefix = \"{prefix}\"\n",
            redis.url()
        );
        config(
            port,
            &cert,
            "session_tickets = { rotate = \"1h\" }",
            &upstream,
            &cluster,
        )
    };
    let (a, b) = (free_port(), free_port());
    let gateway_a = Gateway::start(None, &node(a, "node-a"));
    let gateway_b = Gateway::start(None, &node(b, "node-b"));
    let key = format!("{prefix}:tls_tickets:tls");
    field_changed(&redis, &key, "rotated_at", "");

    let tickets = [Client::Tls13, Client::Tls12Ticket];
    let files: Vec<PathBuf> = (0..2)
        .map(|index| cert.path(&format!("a{index}.pem")))
        .collect();
    for (client, file) in tickets.iter().zip(&files) {
        // A session made on A resumes on B once both have taken the cluster's keys (within
        // a second or so of start): until then each seals with a key of its own.
        let deadline = Instant::now() + WAIT;
        loop {
            save_session(a, &cert, *client, file);
            if offer(b, &cert, *client, file) == "Reused" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{client:?}: B never resumed A's session"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The session id cache is each node's own: a TLS 1.2 session id made on A is new to B.
    let id = cert.path("id.pem");
    save_session(a, &cert, Client::Tls12SessionId, &id);
    assert_eq!(offer(b, &cert, Client::Tls12SessionId, &id), "New");

    // One rotation: the previous key still opens the tickets, on both nodes, at any moment
    // of adopting it.
    force_rotation(&redis, &key, 3600);
    for (client, file) in tickets.iter().zip(&files) {
        for port in [a, b, a, b] {
            assert_eq!(
                offer(port, &cert, *client, file),
                "Reused",
                "{client:?} on {port}"
            );
        }
    }
    // A second rotation: those keys are gone; the tickets are refused (full handshakes).
    force_rotation(&redis, &key, 3600);
    for (client, file) in tickets.iter().zip(&files) {
        offer_until(a, &cert, *client, file, "New");
        offer_until(b, &cert, *client, file, "New");
    }
    // The keys never reach the log.
    let current = redis.cli(&["--no-raw", "HGET", &key, "current"]);
    for gateway in [&gateway_a, &gateway_b] {
        let log = gateway.log();
        assert!(!log.contains(current.trim_matches('"')), "{log}");
        assert!(!log.contains("tls_tickets"), "{log}");
    }
}

#[test]
fn certificates_near_expiry_are_warned_about_and_expired_ones_are_errors() {
    let upstream = Upstream::start("echo");
    // (days of validity, what check-config says about the certificate)
    let cases: [(u32, Option<&str>); 6] = [
        (
            1,
            Some("warning: listeners[0].tls.certificates[0].cert: the certificate in"),
        ),
        (3, Some(": renew it")),
        (13, Some(": renew it")),
        (15, None),
        (400, None),
        (
            0,
            Some("error: listeners[0].tls.certificates[0].cert: the certificate in"),
        ),
    ];
    for (days, expected) in cases {
        let cert = Cert::new(days);
        if days == 0 {
            // notAfter is now: a second later it has passed.
            std::thread::sleep(Duration::from_millis(1100));
        }
        let (ok, text) = check_config(
            cert.dir.dir(),
            &config(free_port(), &cert, "", &upstream, ""),
        );
        assert!(ok, "{days} days: {text}");
        match expected {
            Some(expected) => {
                assert!(text.contains(expected), "{days} days: {text}");
                assert!(text.contains(&cert.file("cert.pem")), "{days} days: {text}");
            }
            None => assert!(
                !text.contains("certificates[0].cert"),
                "{days} days: {text}"
            ),
        }
        if (1..14).contains(&days) {
            // Made moments ago: `days` whole days left, or a few seconds under.
            let (under, whole) = (
                format!("in {} days 23 hours", days - 1),
                format!("in {days} days 0 hours"),
            );
            assert!(text.contains(&under) || text.contains(&whole), "{text}");
        }
        if days == 0 {
            assert!(text.contains("expired on"), "{text}");
            assert!(
                !text.contains("warning: listeners[0].tls.certificates[0].cert"),
                "{text}"
            );
        }
    }
}

#[test]
fn the_expiry_metric_counts_down_to_not_after() {
    let upstream = Upstream::start("echo");
    let (soon, later) = (Cert::new(3), Cert::new(400));
    let metrics = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let mut text = config(
        port,
        &soon,
        "",
        &upstream,
        &format!("[metrics]\naddress = \"{metrics}\""),
    );
    // A second certificate, for another name.
    text = text.replace(
        "[[upstreams]]",
        &format!(
            "[[listeners.tls.certificates]]\ncert = {:?}\nkey = {:?}\nnames = [\"later.test\"]\n\
             [[upstreams]]",
            later.file("cert.pem"),
            later.file("key.pem")
        ),
    );
    let gateway = Gateway::start(None, &text);
    let scrape =
        gateway_tests::scrape::samples(&curl(&[&format!("http://{metrics}/metrics")]).body);
    let day = 86_400.0;
    for (cert, days) in [(&soon, 3.0), (&later, 400.0)] {
        let series = format!(
            "gateway_tls_certificate_expiry_seconds{{listener=\"tls\",name=\"{}\"}}",
            cert.file("cert.pem")
        );
        let value = *scrape
            .get(&series)
            .unwrap_or_else(|| panic!("no {series} in {scrape:#?}"));
        // Made moments ago for `days` days: within an hour below that (a slow machine).
        assert!(
            value <= days * day && value > days * day - 3600.0,
            "{series} = {value}"
        );
    }
    // The 3-day certificate is also named in the daemon's log.
    assert!(gateway.log().contains("renew it"), "{}", gateway.log());
}
