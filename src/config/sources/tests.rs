//! `[[sources]]` through `Settings::from_toml_env`: each kind's keys and
//! schemes, `${VAR}` expansion, secrets kept out of `Debug` and errors.

use super::super::{ConfigError, Settings};
use super::*;

const SOURCE_TOPICS: &str = "[[topics]]\npattern = \"odds/*\"\n";

fn with_env(src: &str) -> Result<Settings, ConfigError> {
    Settings::from_toml_env(src, &|name: &str| match name {
        "ORIGIN_TOKEN" => Some("s3cret-token".into()),
        "ODDS_KEY" => Some("k3y".into()),
        _ => None,
    })
}

#[test]
fn an_sse_source_expands_env_and_keeps_secrets_out_of_debug() {
    let s = with_env(&format!(
        r#"{SOURCE_TOPICS}
[[sources]]
name = "odds-origin"
kind = "sse"
url = "https://origin.example:9000/stream?apiKey=${{ODDS_KEY}}"
headers = {{ Authorization = "Bearer ${{ORIGIN_TOKEN}}", X-Plain = "a$b" }}
events = ["odds_update"]
topic = "odds/{{sport_key}}"
rows = "/data"
snapshot_url = "https://origin.example:9000/snapshot"
"#
    ))
    .unwrap();
    let so = &s.sources[0];
    assert_eq!(so.kind, SourceKind::Sse);
    assert_eq!(
        so.url.expose(),
        "https://origin.example:9000/stream?apiKey=k3y"
    );
    assert_eq!(so.display_url(), "https://origin.example:9000/stream");
    assert_eq!(so.headers[0].0, "Authorization");
    assert_eq!(so.headers[0].1.expose(), "Bearer s3cret-token");
    assert_eq!(so.headers[1].1.expose(), "a$b");
    assert_eq!(so.idle_timeout_s, DEFAULT_IDLE_TIMEOUT_S);
    assert_eq!(so.backoff_max_ms, DEFAULT_BACKOFF_MAX_MS);
    assert_eq!(
        so.topic,
        vec![Part::Lit("odds/".into()), Part::Var("sport_key".into())]
    );
    let debug = format!("{s:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
    assert!(!debug.contains("k3y"), "{debug}");
}

#[test]
fn a_missing_variable_is_named_and_no_value_is_shown() {
    let e = with_env(&format!(
        "{SOURCE_TOPICS}[[sources]]\nname = \"o\"\nkind = \"sse\"\nurl = \"http://o/s\"\ntopic = \"odds/x\"\nheaders = {{ A = \"${{ORIGIN_TOKEN}}\", B = \"${{NOPE_NOT_SET}}\" }}\n"
    ))
    .unwrap_err();
    assert_eq!(e.line, 8, "{e}");
    assert!(
        e.message
            .contains("headers.B: environment variable NOPE_NOT_SET is not set"),
        "{e}"
    );
    assert!(!e.message.contains("s3cret"), "{e}");
    assert_eq!(
        expand_env("a${X}b${Y}", |n| Some(n.to_lowercase())).unwrap(),
        "axby"
    );
    assert!(expand_env("${X", |_| Some(String::new())).is_err());
    assert!(expand_env("${1X}", |_| Some(String::new())).is_err());
    assert_eq!(expand_env("$X {Y}", |_| None).unwrap(), "$X {Y}");
}

#[test]
fn each_kind_takes_its_own_keys_and_schemes() {
    let base = |kind: &str, extra: &str| {
        format!("{SOURCE_TOPICS}[[sources]]\nname = \"s\"\nkind = \"{kind}\"\n{extra}\n")
    };
    let ok = [
        ("sse", "url = \"http://o/s\"\ntopic = \"odds/a\""),
        (
            "sse",
            "url = \"https://o/s\"\ntopic = \"odds/{k}\"\nidle_timeout_s = 1\nbackoff_max_ms = 10",
        ),
        (
            "websocket",
            "url = \"ws://o/s\"\ntopic = \"odds/{k}\"\nsubscribe = '{\"op\":\"sub\"}'",
        ),
        (
            "websocket",
            "url = \"wss://o/s\"\ntopic = \"odds/{k}\"\nrows = \"\"",
        ),
        (
            "nats",
            "url = \"nats://127.0.0.1:4222\"\nsubjects = [\"odds.>\"]\ntopic = \"{subject}\"",
        ),
    ];
    for (kind, extra) in ok {
        with_env(&base(kind, extra)).unwrap_or_else(|e| panic!("{kind} {extra}: {e}"));
    }
    let bad = [
        (
            "sse",
            "url = \"ws://o/s\"\ntopic = \"odds/a\"",
            "http or https",
        ),
        (
            "sse",
            "url = \"http:/\"\ntopic = \"odds/a\"",
            "http or https",
        ),
        (
            "websocket",
            "url = \"http://o/s\"\ntopic = \"odds/a\"",
            "ws or wss",
        ),
        (
            "nats",
            "url = \"http://o\"\nsubjects = [\"a\"]\ntopic = \"odds/a\"",
            "nats or tls",
        ),
        (
            "nats",
            "url = \"nats://o\"\ntopic = \"odds/a\"",
            "needs subjects",
        ),
        (
            "nats",
            "url = \"nats://o\"\nsubjects = []\ntopic = \"odds/a\"",
            "subjects",
        ),
        (
            "nats",
            "url = \"nats://o\"\nsubjects = [\"a..b\"]\ntopic = \"odds/a\"",
            "subjects",
        ),
        (
            "nats",
            "url = \"nats://o\"\nsubjects = [\"a\"]\ntopic = \"odds/a\"\nheaders = { A = \"b\" }",
            "'headers' does not apply to a nats source",
        ),
        (
            "websocket",
            "url = \"ws://o\"\ntopic = \"odds/a\"\nevents = [\"x\"]",
            "'events' does not apply",
        ),
        (
            "sse",
            "url = \"http://o\"\ntopic = \"odds/a\"\nsubscribe = \"x\"",
            "'subscribe' does not apply",
        ),
        (
            "sse",
            "url = \"http://o\"\ntopic = \"odds/a\"\nsubjects = [\"x\"]",
            "'subjects' does not apply",
        ),
        ("sse", "url = \"http://o\"", "needs a topic"),
        ("sse", "topic = \"odds/a\"", "needs a url"),
        (
            "sse",
            "url = \"http://o\"\ntopic = \"ticker/a\"",
            "matches no [[topics]] pattern",
        ),
        (
            "sse",
            "url = \"http://o\"\ntopic = \"odds//a\"",
            "not a topic name",
        ),
        (
            "sse",
            "url = \"http://o\"\ntopic = \"odds/{a b}\"",
            "topic must be",
        ),
        (
            "sse",
            "url = \"http://o\"\ntopic = \"odds/a\"\nrows = \"data\"",
            "JSON pointer",
        ),
        (
            "sse",
            "url = \"http://o\"\ntopic = \"odds/a\"\nidle_timeout_s = 0",
            "idle_timeout_s",
        ),
        (
            "sse",
            "url = \"http://o\"\ntopic = \"odds/a\"\nbackoff_max_ms = 1",
            "backoff_max_ms",
        ),
        (
            "sse",
            "url = \"http://o\"\ntopic = \"odds/a\"\nsnapshot_url = \"ws://o\"",
            "snapshot_url",
        ),
        (
            "sse",
            "url = \"http://o\"\ntopic = \"odds/a\"\nheaders = { \"A B\" = \"x\" }",
            "not a header name",
        ),
        (
            "sse",
            "url = \"http://o\"\ntopic = \"odds/a\"\nheaders = { A = \"x\\ny\" }",
            "control character",
        ),
        (
            "sse",
            "url = \"http://o\"\ntopic = \"odds/a\"\nbogus = 1",
            "unknown field",
        ),
        (
            "demo",
            "url = \"http://o\"",
            "'url' does not apply to a demo source",
        ),
        ("rss", "", "unknown source kind 'rss'"),
    ];
    for (kind, extra, want) in bad {
        let e = with_env(&base(kind, extra)).err();
        let msg = e.as_ref().map(|e| e.message.clone()).unwrap_or_default();
        assert!(msg.contains(want), "{kind} {extra:?}: {msg:?}");
    }
    // names: required, unique, label-safe
    let e = with_env(&format!(
        "{SOURCE_TOPICS}[[sources]]\nkind = \"sse\"\nurl = \"http://o\"\ntopic = \"odds/a\"\n"
    ))
    .unwrap_err();
    assert!(e.message.contains("needs a name"), "{e}");
    let e = with_env(&format!(
        "{SOURCE_TOPICS}[[sources]]\nname = \"a b\"\nkind = \"demo\"\n"
    ))
    .unwrap_err();
    assert!(e.message.contains("source name must be"), "{e}");
    let two = base("sse", "url = \"http://o\"\ntopic = \"odds/a\"");
    let e = with_env(&format!("{two}{}", two.replace(SOURCE_TOPICS, ""))).unwrap_err();
    assert!(e.message.contains("duplicate source name 's'"), "{e}");
    assert_eq!(e.line, 9, "{e}");
}
