//! `POST /v1/rules/import` with the lines as the body (`text/plain`), read as they arrive: the
//! daemon's memory grows with the networks imported, never with the text; an import that
//! cannot fit is refused before its body is read (declared count) or at the first line over
//! (undeclared); a bad line, a bad query or a body cut short imports nothing.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use gateway_tests::Gateway;

/// XDP off: the store and the parsing are what is measured; the rule maps' capacity still
/// bounds an import.
const CONFIG: &str = "[admin]\nsocket = \"{admin_socket}\"\nstate_file = \"{dir}/state.json\"\n\
                      [xdp]\nmode = \"off\"\nmax_rules_v4 = 30000\nmax_rules_v6 = 1000\n\
                      [firewall]\ndeny = [\"203.0.113.0/24\"]";
/// Room for operator rules: both maps, less the config's rule.
const ROOM: usize = 30_000 + 1_000 - 1;
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// One line per network, padded with a comment so the text is far larger than the rules.
fn padded_line(n: usize, pad: usize) -> String {
    format!(
        "10.{}.{}.{} # {}\n",
        n >> 16,
        (n >> 8) & 255,
        n & 255,
        "x".repeat(pad)
    )
}

/// Bytes of `lines` padded lines.
fn body_len(lines: usize, pad: usize) -> usize {
    (0..lines).map(|n| padded_line(n, pad).len()).sum()
}

/// The head of a streamed import over the admin socket.
fn head(query: &str, length: usize) -> String {
    format!(
        "POST /v1/rules/import?{query} HTTP/1.1\r\nHost: gateway\r\nContent-Type: text/plain\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )
}

/// Sends `head`, then what `body` makes (it gets the stream; it may stop early), then reads
/// the answer: status and JSON. A write refused because the daemon answered early is fine.
fn exchange(
    socket: &Path,
    head: &str,
    body: impl FnOnce(&mut UnixStream) -> std::io::Result<()>,
) -> (u16, serde_json::Value) {
    let mut stream = UnixStream::connect(socket).expect("connecting to the admin socket");
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| body(&mut stream));
    let mut answer = Vec::new();
    if let Err(error) = stream.read_to_end(&mut answer) {
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    (status, json)
}

/// Kernel-reported peak resident memory of the daemon (`VmHWM`), KiB.
fn peak_kib(gateway: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.pid())).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

fn operator_rules(gateway: &Gateway) -> usize {
    let output = gateway.cli(&["firewall", "list", "--json"]);
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("\"operator\""))
        .count()
}

#[test]
fn a_streamed_import_costs_its_networks_not_its_text() {
    let gateway = Gateway::start(None, CONFIG);
    // Warm up: the first import makes the store's tables and the blocking threads.
    let warm = padded_line(0xff_ffff, 10);
    let (status, answer) = exchange(
        gateway.socket(),
        &head("action=deny", warm.len()),
        |stream| stream.write_all(warm.as_bytes()),
    );
    assert_eq!(status, 200, "{answer}");
    let before = peak_kib(&gateway);

    // 20,000 networks, each line padded to 8 KiB: 160 MiB of text, sent in 64 KiB writes.
    // The padding makes the text dwarf what the networks themselves cost (about 1 KiB each
    // in the store's index and tables, allocator included).
    let (lines, pad) = (20_000, 8_000);
    let length = body_len(lines, pad);
    let (status, answer) = exchange(
        gateway.socket(),
        &head("action=deny&comment=padded%20list", length),
        |stream| {
            let mut chunk = String::with_capacity(64 << 10);
            for n in 0..lines {
                chunk.push_str(&padded_line(n, pad));
                if chunk.len() >= 60 << 10 || n + 1 == lines {
                    stream.write_all(chunk.as_bytes())?;
                    chunk.clear();
                }
            }
            Ok(())
        },
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["imported"], lines);
    let grown_kib = peak_kib(&gateway).saturating_sub(before);
    let body_kib = (length >> 10) as u64;
    eprintln!("peak memory grew {grown_kib} KiB importing a {body_kib} KiB body");
    // Holding the text would cost 160 MiB (twice that with a copy); the rules cost about 20.
    assert!(
        grown_kib < body_kib / 4,
        "the daemon's peak memory grew by {grown_kib} KiB for a {body_kib} KiB import"
    );
    assert_eq!(operator_rules(&gateway), lines + 1);
    let listed = gateway.cli(&["firewall", "list", "--json", "--limit", "3"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("padded list"),
        "the query's comment is on the rules"
    );
}

#[test]
fn an_import_that_cannot_fit_is_refused_before_or_as_its_lines_arrive() {
    let gateway = Gateway::start(None, CONFIG);

    // Declared: refused from the head alone; the 1 GiB body is never sent.
    for declared in [ROOM + 1, 10 * ROOM, usize::MAX] {
        let (status, answer) = exchange(
            gateway.socket(),
            &head(&format!("action=deny&lines={declared}"), 1 << 30),
            |_| Ok(()),
        );
        assert_eq!(status, 507, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("{declared} rules do not fit")) && error.contains("raise"),
            "{error}"
        );
    }

    // Undeclared: refused at the first network over the room; the rest is not read. At
    // most 4x the room is offered (a bounded write that the daemon stops early).
    let before = peak_kib(&gateway);
    let offered = 4 * (ROOM + 1);
    let offered_len = body_len(offered, 1_000);
    let (status, answer) = exchange(
        gateway.socket(),
        &head("action=deny", offered_len),
        |stream| {
            let mut chunk = String::new();
            for n in 0..offered {
                chunk.push_str(&padded_line(n, 1_000));
                if chunk.len() >= 60 << 10 {
                    stream.write_all(chunk.as_bytes())?;
                    chunk.clear();
                }
            }
            stream.write_all(chunk.as_bytes())
        },
    );
    assert_eq!(status, 507, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("more than {ROOM} rules"))
            && error.contains("nothing was imported"),
        "{error}"
    );
    let grown_kib = peak_kib(&gateway).saturating_sub(before);
    let offered_kib = (offered_len >> 10) as u64;
    assert!(
        grown_kib < offered_kib / 4,
        "peak grew {grown_kib} KiB for {offered_kib} KiB offered"
    );
    assert_eq!(operator_rules(&gateway), 0, "nothing was imported");

    // A declared count the body exceeds is the client's error, and imports nothing.
    let body = "192.0.2.1\n192.0.2.2\n192.0.2.3\n";
    let (status, answer) = exchange(
        gateway.socket(),
        &head("action=deny&lines=2", body.len()),
        |stream| stream.write_all(body.as_bytes()),
    );
    assert_eq!(
        (status, &answer["field"]),
        (400, &"lines".into()),
        "{answer}"
    );
    assert_eq!(operator_rules(&gateway), 0);
}

#[test]
fn bad_lines_bad_queries_and_cut_bodies_import_nothing() {
    let gateway = Gateway::start(None, CONFIG);
    let good = "192.0.2.1\n2001:db8::/48 # v6\n\n# comment\n";
    // (query, body, field named, words of the error)
    let refused: &[(&str, String, &str, &str)] = &[
        ("", good.into(), "action", "missing"),
        (
            "action=block",
            good.into(),
            "action",
            "neither allow nor deny",
        ),
        (
            "action=DENY",
            good.into(),
            "action",
            "neither allow nor deny",
        ),
        ("action=deny&lines=-1", good.into(), "lines", "not a number"),
        (
            "action=deny&lines=1e3",
            good.into(),
            "lines",
            "not a number",
        ),
        ("action=deny&lines=", good.into(), "lines", "not a number"),
        (
            "action=deny",
            format!("{good}192.0.2.300\n"),
            "text",
            "line 5: \"192.0.2.300\"",
        ),
        (
            "action=deny",
            format!("{good}10.0.0.1/8\n"),
            "text",
            "host bits",
        ),
        ("action=deny", format!("{good}\u{0}\n"), "text", "line 5"),
        (
            "action=deny",
            format!("{good}{}\n", "9".repeat(70_000)),
            "text",
            "longer than 64 KiB",
        ),
    ];
    for (query, body, field, words) in refused {
        let (status, answer) = exchange(gateway.socket(), &head(query, body.len()), |stream| {
            stream.write_all(body.as_bytes())
        });
        assert_eq!(status, 400, "{query}: {answer}");
        assert_eq!(answer["field"], *field, "{query}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(words), "{query}: {error}");
        assert_eq!(operator_rules(&gateway), 0, "{query} imported something");
    }
    // A network repeated within the import, or a comment over 1 KiB: refused as a whole.
    let repeated = format!("{good}192.0.2.1\n");
    let (status, answer) = exchange(
        gateway.socket(),
        &head("action=deny", repeated.len()),
        |stream| stream.write_all(repeated.as_bytes()),
    );
    assert_eq!(status, 409, "{answer}");
    let long = format!("action=deny&comment={}", "c".repeat(1025));
    let (status, answer) = exchange(gateway.socket(), &head(&long, good.len()), |stream| {
        stream.write_all(good.as_bytes())
    });
    assert_eq!(
        (status, &answer["field"]),
        (400, &"comment".into()),
        "{answer}"
    );
    assert_eq!(operator_rules(&gateway), 0);

    // Cut short: the client stops sending and closes its side before the announced length.
    for sent in [0, 5, good.len() - 1] {
        let (status, answer) = exchange(
            gateway.socket(),
            &head("action=deny", good.len()),
            |stream| {
                stream.write_all(&good.as_bytes()[..sent])?;
                stream.shutdown(std::net::Shutdown::Write)
            },
        );
        assert_eq!(status, 400, "{sent} bytes: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains("nothing was imported"), "{error}");
        assert_eq!(operator_rules(&gateway), 0, "a cut body imported something");
    }

    // The same lines, whole: imported, with the comment decoded from the query.
    let (status, answer) = exchange(
        gateway.socket(),
        &head("action=allow&comment=from%20a%20feed%20%23%26", good.len()),
        |stream| stream.write_all(good.as_bytes()),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["imported"], 2);
    let listed = gateway.cli(&["firewall", "list", "--json"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("from a feed #&"), "{listed}");
    assert!(listed.contains("\"allow\""), "{listed}");
}
