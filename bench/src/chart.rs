//! The round-trip chart: one bar per system (median), a whisker from min to max, on a
//! log scale, as a self-contained SVG (no plotting library: a few rectangles and lines).

use std::fmt::Write as _;

use crate::figure::Figure;

const WIDTH: f64 = 900.0;
const LABEL: f64 = 300.0;
const ROW: f64 = 26.0;
const TOP: f64 = 50.0;

/// What a bar stands for (its colour).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The raw pipe.
    Floor,
    /// This project.
    Loom,
    /// A peer.
    Peer,
}

/// One bar: a figure in microseconds, its label and kind.
pub struct Bar<'a> {
    /// The figure (its median is the bar, min to max the whisker).
    pub figure: &'a Figure,
    /// Short enough for the label column.
    pub label: &'a str,
    /// Colour.
    pub kind: Kind,
}

/// An SVG bar chart of `bars` (those with a median). `None` when there are none.
pub fn latency_svg(bars: &[Bar<'_>], title: &str) -> Option<String> {
    let bars: Vec<&Bar<'_>> = bars.iter().filter(|b| b.figure.median() > 0.0).collect();
    if bars.is_empty() {
        return None;
    }
    let lo = bars.iter().map(|b| b.figure.min()).fold(f64::INFINITY, f64::min);
    let hi = bars.iter().map(|b| b.figure.max()).fold(0.0, f64::max);
    let (first, last) = (lo.log10().floor(), hi.log10().ceil().max(lo.log10().floor() + 1.0));
    let plot = WIDTH - LABEL - 30.0;
    let x = |us: f64| LABEL + (us.log10() - first) / (last - first) * plot;
    let height = TOP + ROW * bars.len() as f64 + 40.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>
"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Decades: 1 us, 10 us, ...
    let bottom = TOP + ROW * bars.len() as f64;
    for decade in first as i32..=last as i32 {
        let us = 10f64.powi(decade);
        let gx = x(us);
        let _ = write!(
            svg,
            r##"<line x1="{gx:.1}" y1="{}" x2="{gx:.1}" y2="{bottom}" stroke="#ddd"/>
<text x="{gx:.1}" y="{}" text-anchor="middle">{} us</text>
"##,
            TOP - 8.0,
            bottom + 16.0,
            us
        );
    }
    for (i, bar) in bars.iter().enumerate() {
        let (y, f) = (TOP + ROW * i as f64, bar.figure);
        let colour = match bar.kind {
            Kind::Loom => "#2b6cb0",
            Kind::Floor => "#718096",
            Kind::Peer => "#dd8452",
        };
        let (x0, xm) = (x(10f64.powf(first)), x(f.median()));
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text>
<rect x="{x0:.1}" y="{}" width="{:.1}" height="{}" fill="{colour}"/>
<line x1="{:.1}" y1="{}" x2="{:.1}" y2="{}" stroke="black"/>
<text x="{:.1}" y="{}">{}</text>
"##,
            LABEL - 8.0,
            y + ROW * 0.62,
            escape(bar.label),
            y + 4.0,
            (xm - x0).max(1.0),
            ROW - 8.0,
            x(f.min()),
            y + ROW / 2.0,
            x(f.max()),
            y + ROW / 2.0,
            x(f.max()) + 4.0,
            y + ROW * 0.62,
            format_us(f.median())
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" fill="#555">bars: median; lines: min to max over rounds; log scale; blue: this supervisor, grey: raw pipe, orange: peers</text>
</svg>
"##,
        LABEL,
        height - 8.0
    );
    Some(svg)
}

fn format_us(us: f64) -> String {
    if us >= 100.0 {
        format!("{us:.0}")
    } else if us >= 10.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_figure_and_labels_escaped() {
        let mut a = Figure::new("raw pipe ping-pong (floor)", "us");
        a.rounds = vec![2.0, 2.1, 2.2];
        let mut b = Figure::new("peer", "us");
        b.rounds = vec![700.0];
        let empty = Figure::new("not measured", "us");
        let bars = [
            Bar { figure: &a, label: "raw pipe", kind: Kind::Floor },
            Bar { figure: &b, label: "<fast> & small", kind: Kind::Peer },
            Bar { figure: &empty, label: "none", kind: Kind::Loom },
        ];
        let svg = latency_svg(&bars, "t").unwrap();
        assert_eq!(svg.matches("<rect x=").count(), 2, "{svg}");
        assert!(svg.contains("&lt;fast&gt; &amp; small"));
        assert!(svg.contains(">1 us<") && svg.contains(">1000 us<"), "decades from 1 to 1000: {svg}");
        assert!(latency_svg(&bars[2..], "t").is_none());
    }
}
