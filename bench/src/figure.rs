//! A measurement taken over several rounds, and a goal checked against medians.

/// One measurement over its rounds.
pub struct Figure {
    /// What was measured (the row's name in BENCHMARKS.md).
    pub name: &'static str,
    /// `us`, `ms`, `tasks/s`, `MB`, `%`, `s`, ...
    pub unit: &'static str,
    /// One value per round.
    pub rounds: Vec<f64>,
    /// Where the figure comes from, when not from this program (a peer's name).
    pub note: String,
}

impl Figure {
    /// An empty figure.
    pub fn new(name: &'static str, unit: &'static str) -> Figure {
        Figure { name, unit, rounds: Vec::new(), note: String::new() }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.rounds.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The smallest round (NaN when none).
    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    /// The median round (NaN when none).
    pub fn median(&self) -> f64 {
        median(&mut self.sorted())
    }

    /// The largest round (NaN when none).
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// The median of `v` (NaN when empty); sorts it.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The figures of one run, looked up by name, remarks for the report, and facts about the
/// run (a server's version) by key.
#[derive(Default)]
pub struct Figures(pub Vec<Figure>, pub Vec<String>, pub Vec<(&'static str, String)>);

impl Figures {
    /// Records a fact about the run under `key`.
    pub fn set_fact(&mut self, key: &'static str, value: String) {
        self.2.push((key, value));
    }

    /// The fact recorded under `key`.
    pub fn fact(&self, key: &str) -> Option<&str> {
        self.2.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    /// A remark printed under the table (e.g. why something was not measured).
    pub fn note(&mut self, text: String) {
        self.1.push(text);
    }

    /// The largest round of the figure called `name` (NaN when it was not measured).
    pub fn max(&self, name: &str) -> f64 {
        self.0.iter().find(|f| f.name == name).map_or(f64::NAN, Figure::max)
    }

    /// The smallest round of the figure called `name` (NaN when it was not measured).
    pub fn min(&self, name: &str) -> f64 {
        self.0.iter().find(|f| f.name == name).map_or(f64::NAN, Figure::min)
    }

    /// The median of the figure called `name` (NaN when it was not measured).
    pub fn median(&self, name: &str) -> f64 {
        self.0.iter().find(|f| f.name == name).map_or(f64::NAN, Figure::median)
    }

    /// Adds a figure; one without rounds (not measured) is left out.
    pub fn push(&mut self, figure: Figure) {
        if !figure.rounds.is_empty() {
            self.0.push(figure);
        }
    }
}

/// How far off a gated goal a `--quick` run may be before it fails: noise and load move a
/// side-by-side ratio by well under this (see bench/README.md); a regression worth
/// stopping a landing for moves it by more.
pub const GROSS: f64 = 3.0;

/// Whether higher or lower is better for a goal.
#[derive(Clone, Copy)]
pub enum Better {
    /// The value must be at most the bound.
    Lower,
    /// The value must be at least the bound.
    Higher,
}

/// A goal (from issue 7, or the form the CI gate checks it in), as a bound on a value
/// computed from this run's medians.
pub struct Goal {
    /// The goal as the issue words it.
    pub text: &'static str,
    /// A few words naming it in the gate's verdict line.
    pub key: &'static str,
    /// This run's value (NaN when not measured).
    pub value: f64,
    /// How the value is shown, e.g. `2.1x`.
    pub shown: String,
    /// The bound.
    pub bound: f64,
    /// Which side of the bound is good.
    pub better: Better,
    /// Whether the `--quick` gate may fail on it: only when a slower or busier host leaves
    /// the value alone (a ratio of two figures measured side by side in this run, memory,
    /// a count). A time or a rate on this host is reported, never gated: a loaded host
    /// would fail CI with no change to the code.
    pub gated: bool,
}

/// How a goal fared.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// The goal holds.
    Met,
    /// Missed, by less than the gross-regression margin.
    Missed,
    /// Missed by more than `gross` times the bound: the `--quick` failure.
    Gross,
    /// Not measured in this run.
    NotMeasured,
}

impl Goal {
    /// Met, missed, or missed by more than a factor of `gross`.
    pub fn verdict(&self, gross: f64) -> Verdict {
        if self.value.is_nan() {
            return Verdict::NotMeasured;
        }
        let met = match self.better {
            Better::Lower => self.value <= self.bound,
            Better::Higher => self.value >= self.bound,
        };
        let gross_miss = match self.better {
            Better::Lower => self.value > self.limit(gross),
            Better::Higher => self.value < self.limit(gross),
        };
        if met {
            Verdict::Met
        } else if gross_miss {
            Verdict::Gross
        } else {
            Verdict::Missed
        }
    }

    /// The value beyond which the goal is missed by more than a factor of `gross`.
    pub fn limit(&self, gross: f64) -> f64 {
        match self.better {
            Better::Lower => self.bound * gross,
            Better::Higher => self.bound / gross,
        }
    }
}

/// The gated goals missed by more than a factor of `gross`: what fails a `--quick` run.
/// A goal not measured in this run (`--only`) fails nothing.
pub fn gate(goals: &[Goal], gross: f64) -> Vec<&Goal> {
    goals.iter().filter(|g| g.gated && g.verdict(gross) == Verdict::Gross).collect()
}

/// One line with the verdict and every gated goal measured: its value and the limit it
/// would fail beyond, e.g. `gate passed: restart / fresh start 1.31x (limit 6)`.
pub fn verdict_line(goals: &[Goal], gross: f64) -> String {
    let failed = gate(goals, gross);
    let shown: Vec<String> = goals
        .iter()
        .filter(|g| g.gated && g.verdict(gross) != Verdict::NotMeasured)
        .map(|g| format!("{} {} (limit {})", g.key, g.shown, number(g.limit(gross))))
        .collect();
    let head = if failed.is_empty() {
        "gate passed".to_owned()
    } else {
        let names: Vec<&str> = failed.iter().map(|g| g.text).collect();
        format!("gate FAILED, missed by more than {gross}x: {}", names.join("; "))
    };
    format!("{head} [{}]", shown.join(", "))
}

/// A number with as many decimals as it needs to read well (`6`, `0.83`, `83333`).
pub fn number(x: f64) -> String {
    let text = match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 1.0 => format!("{x:.2}"),
        _ => format!("{x:.3}"),
    };
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_rounds() {
        let mut f = Figure::new("x", "us");
        f.rounds = vec![3.0, 1.0, 2.0];
        assert_eq!((f.min(), f.median(), f.max()), (1.0, 2.0, 3.0));
        f.rounds.push(10.0);
        assert_eq!(f.median(), 2.5);
        assert!(Figure::new("y", "us").median().is_nan());
    }

    fn goal(value: f64, better: Better, gated: bool) -> Goal {
        Goal { text: "g", key: "g", value, shown: format!("{value}"), bound: 2.0, better, gated }
    }

    #[test]
    fn verdicts_allow_noise_and_catch_gross_regressions() {
        assert_eq!(goal(1.9, Better::Lower, true).verdict(3.0), Verdict::Met);
        assert_eq!(goal(5.9, Better::Lower, true).verdict(3.0), Verdict::Missed);
        assert_eq!(goal(6.1, Better::Lower, true).verdict(3.0), Verdict::Gross);
        assert_eq!(goal(0.7, Better::Higher, true).verdict(3.0), Verdict::Missed);
        assert_eq!(goal(0.6, Better::Higher, true).verdict(3.0), Verdict::Gross);
        assert_eq!(goal(f64::NAN, Better::Higher, true).verdict(3.0), Verdict::NotMeasured);
    }

    #[test]
    fn the_gate_fails_only_on_gated_goals_missed_grossly() {
        // A time on this host missed 10x (a loaded machine) fails nothing.
        assert!(gate(&[goal(20.0, Better::Lower, false)], 3.0).is_empty());
        // A side-by-side ratio missed by less than 3x is noise; by more, a regression.
        assert!(gate(&[goal(5.9, Better::Lower, true)], 3.0).is_empty());
        let failed = [goal(1.0, Better::Lower, true), goal(6.1, Better::Lower, true)];
        assert_eq!(gate(&failed, 3.0).len(), 1);
        // Not measured (`--only`) is not a failure.
        assert!(gate(&[goal(f64::NAN, Better::Lower, true)], 3.0).is_empty());
    }

    #[test]
    fn the_verdict_line_names_failures_and_shows_limits() {
        let goals = [goal(1.5, Better::Lower, true), goal(0.7, Better::Higher, true), goal(9.0, Better::Lower, false)];
        assert_eq!(verdict_line(&goals, 3.0), "gate passed [g 1.5 (limit 6), g 0.7 (limit 0.667)]");
        let line = verdict_line(&[goal(7.0, Better::Lower, true)], 3.0);
        assert!(line.starts_with("gate FAILED, missed by more than 3x: g ["), "{line}");
    }
}
