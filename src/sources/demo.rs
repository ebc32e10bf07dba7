//! The built-in demo feed (`[[sources]] kind = "demo"`): simulated odds for
//! two sports and a ticker for five symbols, published through the same
//! parser and hub path as `POST /v1/publish`.
//!
//! Cold module: one thread, a few dozen rows a second. It stops when the hub
//! drains.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::hub::Hub;
use crate::sources::publish::parse_rows;
use crate::time::unix_millis;

/// How often the demo publishes (each tick: some odds rows per sport and one
/// tick per symbol).
pub const DEMO_TICK: Duration = Duration::from_millis(250);

pub const SPORTS: [(&str, [&str; 12]); 2] = [
    (
        "basketball_nba",
        [
            "Celtics", "Lakers", "Nuggets", "Knicks", "Bucks", "Suns", "Heat", "Warriors", "Bulls", "Spurs",
            "Magic", "Pacers",
        ],
    ),
    (
        "soccer_epl",
        [
            "Arsenal", "Chelsea", "Liverpool", "Everton", "Fulham", "Brentford", "Newcastle", "Wolves", "Spurs",
            "Villa", "Leeds", "Burnley",
        ],
    ),
];
pub const BOOKMAKERS: [&str; 4] = ["pinnacle", "fanduel", "draftkings", "novig"];
pub const MARKETS: [&str; 2] = ["h2h", "spreads"];
pub const SYMBOLS: [&str; 5] = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG"];

struct OddsRow {
    event: usize,
    bookmaker: usize,
    market: usize,
    outcome: usize,
    price: i32,
}

/// Starts the demo feed on its own thread.
pub fn spawn(hub: Arc<Hub>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("sluice-demo".into()).spawn(move || run(&hub))
}

fn run(hub: &Hub) {
    let mut rng = fastrand::Rng::with_seed(0x51u64);
    // Six games per sport (twelve teams), every book × market × outcome.
    let mut odds: Vec<Vec<OddsRow>> = SPORTS
        .iter()
        .map(|_| {
            let mut rows = Vec::new();
            for event in 0..6 {
                for bookmaker in 0..BOOKMAKERS.len() {
                    for market in 0..MARKETS.len() {
                        for outcome in 0..2 {
                            let price = if outcome == 0 { -110 - rng.i32(0..60) } else { 100 + rng.i32(0..60) };
                            rows.push(OddsRow { event, bookmaker, market, outcome, price });
                        }
                    }
                }
            }
            rows
        })
        .collect();
    let mut prices: Vec<f64> = SYMBOLS.iter().enumerate().map(|(i, _)| 100.0 + 70.0 * i as f64).collect();

    // Full state first, then a few rows per tick.
    for (s, rows) in odds.iter().enumerate() {
        let idx: Vec<usize> = (0..rows.len()).collect();
        publish_odds(hub, s, rows, &idx);
    }
    let mut body = String::new();
    while !hub.is_draining() {
        std::thread::sleep(DEMO_TICK);
        for (s, rows) in odds.iter_mut().enumerate() {
            let n = 3 + rng.usize(0..6);
            let changed: Vec<usize> = (0..n).map(|_| rng.usize(0..rows.len())).collect();
            for &i in &changed {
                let step = rng.i32(-8..=8);
                let r = &mut rows[i];
                r.price = if r.price < 0 { (r.price + step).min(-101) } else { (r.price + step).max(100) };
            }
            publish_odds(hub, s, rows, &changed);
        }
        for (i, sym) in SYMBOLS.iter().enumerate() {
            let change = (rng.f64() - 0.5) * 0.4;
            prices[i] = (prices[i] + change).max(1.0);
            body.clear();
            let _ = write!(
                body,
                r#"{{"symbol":"{sym}","price":{:.2},"change":{:.2},"volume":{},"ts":{}}}"#,
                prices[i],
                change,
                rng.u32(1..5000),
                unix_millis()
            );
            publish_body(hub, &format!("ticker/{sym}"), &mut body.clone().into_bytes());
        }
    }
}

fn publish_odds(hub: &Hub, sport: usize, rows: &[OddsRow], which: &[usize]) {
    let (sport_key, teams) = SPORTS[sport];
    let now = unix_millis();
    let mut body = String::from("[");
    for (n, &i) in which.iter().enumerate() {
        let r = &rows[i];
        let home = teams[r.event * 2];
        let away = teams[r.event * 2 + 1];
        let outcome = if r.outcome == 0 { home } else { away };
        if n > 0 {
            body.push(',');
        }
        let _ = write!(
            body,
            r#"{{"event_id":"{sport_key}-{:03}","sport_key":"{sport_key}","home_team":"{home}","away_team":"{away}","bookmaker":"{}","market":"{}","outcome":"{outcome}","price_american":{},"kind":"game","updated_at":{now}}}"#,
            r.event + 1,
            BOOKMAKERS[r.bookmaker],
            MARKETS[r.market],
            r.price,
        );
    }
    body.push(']');
    publish_body(hub, &format!("odds/{sport_key}"), &mut body.into_bytes());
}

fn publish_body(hub: &Hub, topic: &str, body: &mut [u8]) {
    let Ok(topic) = hub.topic(topic) else {
        tracing::warn!(topic, "demo topic matches no [[topics]] pattern; not published");
        return;
    };
    match parse_rows(body, false, &topic.key_fields) {
        Ok(rows) => {
            hub.publish(&topic, &rows);
        }
        Err(e) => tracing::warn!(error = %e, "demo row refused"),
    }
}
