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
use crate::sources::publish::{Format, accept};
use crate::time::unix_millis;

/// How often the demo publishes (each tick: some odds rows per sport and one
/// tick per symbol).
pub const DEMO_TICK: Duration = Duration::from_millis(250);

pub const SPORTS: [(&str, [&str; 12]); 2] = [
    (
        "basketball_nba",
        [
            "Celtics", "Lakers", "Nuggets", "Knicks", "Bucks", "Suns", "Heat", "Warriors", "Bulls",
            "Spurs", "Magic", "Pacers",
        ],
    ),
    (
        "soccer_epl",
        [
            "Arsenal",
            "Chelsea",
            "Liverpool",
            "Everton",
            "Fulham",
            "Brentford",
            "Newcastle",
            "Wolves",
            "Spurs",
            "Villa",
            "Leeds",
            "Burnley",
        ],
    ),
];
pub const BOOKMAKERS: [&str; 4] = ["pinnacle", "fanduel", "draftkings", "novig"];
pub const MARKETS: [&str; 3] = ["h2h", "spreads", "totals"];
pub const SYMBOLS: [&str; 5] = ["AAPL", "MSFT", "NVDA", "AMZN", "GOOG"];

struct OddsRow {
    event: usize,
    bookmaker: usize,
    market: usize,
    outcome: usize,
    price: i32,
}

/// Publishes the demo's full state, then keeps changing it on its own
/// thread. The state is there before this returns, so the first subscriber
/// already sees a full table.
pub fn spawn(hub: Arc<Hub>) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut feed = Feed::new();
    feed.publish_all(&hub);
    std::thread::Builder::new()
        .name("sluice-demo".into())
        .spawn(move || feed.run(&hub))
}

struct Feed {
    rng: fastrand::Rng,
    odds: Vec<Vec<OddsRow>>,
    prices: Vec<f64>,
}

impl Feed {
    fn new() -> Feed {
        let mut rng = fastrand::Rng::with_seed(0x51u64);
        // Six games per sport (twelve teams), every book × market × outcome.
        let odds: Vec<Vec<OddsRow>> = SPORTS
            .iter()
            .map(|_| {
                let mut rows = Vec::new();
                for event in 0..6 {
                    for bookmaker in 0..BOOKMAKERS.len() {
                        for market in 0..MARKETS.len() {
                            for outcome in 0..2 {
                                let price = if outcome == 0 {
                                    -110 - rng.i32(0..60)
                                } else {
                                    100 + rng.i32(0..60)
                                };
                                rows.push(OddsRow {
                                    event,
                                    bookmaker,
                                    market,
                                    outcome,
                                    price,
                                });
                            }
                        }
                    }
                }
                rows
            })
            .collect();
        let prices: Vec<f64> = SYMBOLS
            .iter()
            .enumerate()
            .map(|(i, _)| 100.0 + 70.0 * i as f64)
            .collect();
        Feed { rng, odds, prices }
    }

    fn publish_all(&mut self, hub: &Hub) {
        for (s, rows) in self.odds.iter().enumerate() {
            let idx: Vec<usize> = (0..rows.len()).collect();
            publish_odds(hub, s, rows, &idx);
        }
        self.ticks(hub);
    }

    fn ticks(&mut self, hub: &Hub) {
        let rng = &mut self.rng;
        for (i, sym) in SYMBOLS.iter().enumerate() {
            let change = (rng.f64() - 0.5) * 0.4;
            self.prices[i] = (self.prices[i] + change).max(1.0);
            let body = format!(
                r#"{{"symbol":"{sym}","price":{:.2},"change":{:.2},"volume":{},"ts":{}}}"#,
                self.prices[i],
                change,
                rng.u32(1..5000),
                unix_millis()
            );
            publish_body(hub, &format!("ticker/{sym}"), &mut body.into_bytes());
        }
    }

    fn run(mut self, hub: &Hub) {
        while !hub.is_draining() {
            std::thread::sleep(DEMO_TICK);
            let rng = &mut self.rng;
            for (s, rows) in self.odds.iter_mut().enumerate() {
                let n = 3 + rng.usize(0..6);
                let changed: Vec<usize> = (0..n).map(|_| rng.usize(0..rows.len())).collect();
                for &i in &changed {
                    let step = rng.i32(-8..=8);
                    let r = &mut rows[i];
                    r.price = if r.price < 0 {
                        (r.price + step).min(-101)
                    } else {
                        (r.price + step).max(100)
                    };
                }
                publish_odds(hub, s, rows, &changed);
            }
            self.ticks(hub);
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
        tracing::warn!(
            topic,
            "demo topic matches no [[topics]] pattern; not published"
        );
        return;
    };
    if let Err(e) = accept(hub, &topic, body, Format::Json, "demo") {
        tracing::warn!(error = %e, "demo row refused");
    }
}
