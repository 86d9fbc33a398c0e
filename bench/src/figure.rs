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
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// The largest round (NaN when none).
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// The figures of one run, looked up by name, and remarks for the report.
#[derive(Default)]
pub struct Figures(pub Vec<Figure>, pub Vec<String>);

impl Figures {
    /// A remark printed under the table (e.g. why something was not measured).
    pub fn note(&mut self, text: String) {
        self.1.push(text);
    }

    /// The largest round of the figure called `name` (NaN when it was not measured).
    pub fn max(&self, name: &str) -> f64 {
        self.0.iter().find(|f| f.name == name).map_or(f64::NAN, Figure::max)
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

/// Whether higher or lower is better for a goal.
#[derive(Clone, Copy)]
pub enum Better {
    /// The value must be at most the bound.
    Lower,
    /// The value must be at least the bound.
    Higher,
}

/// A goal from issue 7, as a bound on a value computed from this run's medians.
pub struct Goal {
    /// The goal as the issue words it.
    pub text: &'static str,
    /// This run's value (NaN when not measured).
    pub value: f64,
    /// How the value is shown, e.g. `2.1x`.
    pub shown: String,
    /// The bound.
    pub bound: f64,
    /// Which side of the bound is good.
    pub better: Better,
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
        let (met, gross_miss) = match self.better {
            Better::Lower => (self.value <= self.bound, self.value > self.bound * gross),
            Better::Higher => (self.value >= self.bound, self.value < self.bound / gross),
        };
        if met {
            Verdict::Met
        } else if gross_miss {
            Verdict::Gross
        } else {
            Verdict::Missed
        }
    }
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

    #[test]
    fn verdicts_allow_noise_and_catch_gross_regressions() {
        let goal = |value, better| Goal { text: "", value, shown: String::new(), bound: 2.0, better };
        assert_eq!(goal(1.9, Better::Lower).verdict(3.0), Verdict::Met);
        assert_eq!(goal(5.9, Better::Lower).verdict(3.0), Verdict::Missed);
        assert_eq!(goal(6.1, Better::Lower).verdict(3.0), Verdict::Gross);
        assert_eq!(goal(0.7, Better::Higher).verdict(3.0), Verdict::Missed);
        assert_eq!(goal(0.6, Better::Higher).verdict(3.0), Verdict::Gross);
        assert_eq!(goal(f64::NAN, Better::Higher).verdict(3.0), Verdict::NotMeasured);
    }
}
