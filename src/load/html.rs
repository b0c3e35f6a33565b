//! The HTML report of `loopchat load --ramp`: one self-contained file (inline
//! CSS, inline SVG drawn with `plotters`), so it opens offline and can be
//! attached to a ticket as is.

use std::fmt::Write as _;

use plotters::prelude::*;

use super::ramp::{format_us, Metric, RampResult};
use super::report::Sample;

const W: u32 = 960;
const H: u32 = 340;
const P50: RGBColor = RGBColor(46, 108, 223);
const P90: RGBColor = RGBColor(46, 157, 91);
const P99: RGBColor = RGBColor(217, 138, 28);
const MAX: RGBColor = RGBColor(150, 150, 150);
const LIMIT: RGBColor = RGBColor(200, 66, 59);
const STEP_LINE: RGBColor = RGBColor(215, 219, 226);

/// Text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Every per-second sample of every step on one time axis (seconds since the
/// ramp began).
fn timeline(r: &RampResult) -> Vec<(f64, Sample)> {
    r.steps
        .iter()
        .flat_map(|st| st.result.timeline.iter().map(|s| (st.offset + s.t, *s)))
        .collect()
}

type Plot = Result<String, String>;

fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

/// Vertical step boundaries with the step's value beside each.
fn step_marks(r: &RampResult) -> Vec<(f64, String)> {
    r.steps
        .iter()
        .map(|s| (s.offset, format!("{}", s.value)))
        .collect()
}

fn latency_svg(r: &RampResult) -> Plot {
    let tl = timeline(r);
    let xmax = tl.last().map_or(1.0, |(t, _)| *t).max(1.0) + 0.5;
    let ms = |us: u64| (us.max(1) as f64) / 1e3;
    let mut lo = f64::MAX;
    let mut hi: f64 = 0.0;
    for (_, s) in &tl {
        if let Some(l) = s.latency {
            lo = lo.min(ms(l.p50));
            hi = hi.max(ms(l.max));
        }
    }
    let limits: Vec<(String, f64)> = r
        .plan
        .slo
        .terms
        .iter()
        .filter(|t| t.metric != Metric::Loss)
        .map(|t| (t.text.clone(), t.limit / 1e3))
        .collect();
    for (_, l) in &limits {
        hi = hi.max(*l);
        lo = lo.min(*l);
    }
    if lo > hi {
        lo = 0.1;
        hi = 10.0;
    }
    let (lo, hi) = (lo / 2.0, hi * 2.0);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Delivery latency per second (log scale)",
                ("sans-serif", 17),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..xmax, (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc("seconds since the ramp began")
            .y_desc("latency, ms")
            .draw()
            .map_err(err)?;
        for (x, label) in step_marks(r) {
            chart
                .draw_series(LineSeries::new(vec![(x, lo), (x, hi)], STEP_LINE))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    // At the bottom: the legend sits at the top left.
                    // (text hangs below its point: 7% up the log axis).
                    (x + 0.1, lo * (hi / lo).powf(0.07)),
                    ("sans-serif", 12).into_font().color(&MAX),
                )))
                .map_err(err)?;
        }
        for (name, colour, pick) in [
            (
                "max",
                MAX,
                (|l: &super::report::Latency| l.max) as fn(&_) -> u64,
            ),
            ("p99", P99, |l| l.p99),
            ("p90", P90, |l| l.p90),
            ("p50", P50, |l| l.p50),
        ] {
            let pts: Vec<(f64, f64)> = tl
                .iter()
                .filter_map(|(t, s)| s.latency.as_ref().map(|l| (*t, ms(pick(l)))))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 2, colour.filled())))
                .map_err(err)?;
        }
        for (text, y) in limits {
            chart
                .draw_series(LineSeries::new(
                    vec![(0.0, y), (xmax, y)],
                    LIMIT.stroke_width(1),
                ))
                .map_err(err)?
                .label(format!("limit {text}"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], LIMIT));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(STEP_LINE)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

fn throughput_svg(r: &RampResult) -> Plot {
    let tl = timeline(r);
    let xmax = tl.last().map_or(1.0, |(t, _)| *t).max(1.0) + 0.5;
    let dmax = tl
        .iter()
        .map(|(_, s)| s.delivered)
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.15;
    let smax = tl.iter().map(|(_, s)| s.sent).max().unwrap_or(0).max(1) as f64 * 1.15;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Throughput per second", ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(72)
            .right_y_label_area_size(72)
            .build_cartesian_2d(0f64..xmax, 0f64..dmax)
            .map_err(err)?
            .set_secondary_coord(0f64..xmax, 0f64..smax);
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc("seconds since the ramp began")
            .y_desc("deliveries/s")
            .draw()
            .map_err(err)?;
        chart
            .configure_secondary_axes()
            .y_desc("messages sent/s")
            .draw()
            .map_err(err)?;
        for (x, label) in step_marks(r) {
            chart
                .draw_series(LineSeries::new(vec![(x, 0.0), (x, dmax)], STEP_LINE))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    (x + 0.1, dmax * 0.07),
                    ("sans-serif", 12).into_font().color(&MAX),
                )))
                .map_err(err)?;
        }
        chart
            .draw_series(LineSeries::new(
                tl.iter().map(|(t, s)| (*t, s.delivered as f64)),
                P50.stroke_width(2),
            ))
            .map_err(err)?
            .label("deliveries/s (left)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], P50.stroke_width(2)));
        chart
            .draw_secondary_series(LineSeries::new(
                tl.iter().map(|(t, s)| (*t, s.sent as f64)),
                P99.stroke_width(2),
            ))
            .map_err(err)?
            .label("messages sent/s (right)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], P99.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(STEP_LINE)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// Buckets per power of ten in the histogram plot.
const PER_DECADE: f64 = 10.0;

fn histogram_svg(r: &RampResult) -> Plot {
    // Per step: share of the step's deliveries in log-spaced latency buckets.
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let (mut lo, mut hi, mut top) = (f64::MAX, 0f64, 0f64);
    for st in &r.steps {
        let Some(h) = st.result.hist.as_ref().filter(|h| !h.is_empty()) else {
            continue;
        };
        let total = h.len() as f64;
        let mut buckets: std::collections::BTreeMap<i64, u64> = Default::default();
        for v in h.iter_recorded() {
            let us = v.value_iterated_to().max(1) as f64;
            let b = (us.log10() * PER_DECADE).floor() as i64;
            *buckets.entry(b).or_insert(0) += v.count_at_value();
        }
        let pts: Vec<(f64, f64)> = buckets
            .into_iter()
            .map(|(b, n)| {
                let centre_us = 10f64.powf((b as f64 + 0.5) / PER_DECADE);
                (centre_us / 1e3, n as f64 * 100.0 / total)
            })
            .collect();
        for (x, y) in &pts {
            lo = lo.min(*x);
            hi = hi.max(*x);
            top = top.max(*y);
        }
        series.push((format!("step {}", st.value), pts));
    }
    if series.is_empty() {
        lo = 0.1;
        hi = 10.0;
        top = 1.0;
    }
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Latency histogram per step (share of deliveries)",
                ("sans-serif", 17),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d((lo / 1.5..hi * 1.5).log_scale(), 0f64..top * 1.15)
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc("latency, ms (log scale)")
            .y_desc("% of the step's deliveries")
            .draw()
            .map_err(err)?;
        let n = series.len();
        for (i, (name, pts)) in series.into_iter().enumerate() {
            // From light to dark as the load grows.
            let shade = if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                1.0
            };
            let c = RGBColor(
                (170.0 - 140.0 * shade) as u8,
                (195.0 - 120.0 * shade) as u8,
                (245.0 - 60.0 * shade) as u8,
            );
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(STEP_LINE)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// The whole report as one HTML document. `command` is the command line shown
/// at the top.
pub fn ramp_report(r: &RampResult, command: &str) -> String {
    let p = &r.plan;
    let slo: Vec<&str> = p.slo.terms.iter().map(|t| t.text.as_str()).collect();
    let mut h = String::new();
    h.push_str(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>loopchat load ramp</title><style>\n\
         body{font:15px/1.45 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif;\
         color:#1d2330;background:#f5f6f8;margin:0;padding:1.2em 2em 3em;max-width:1040px}\n\
         h1{font-size:1.35em;margin:.2em 0}h2{font-size:1.05em;margin:1.6em 0 .5em}\n\
         code{background:#e8ebf0;border-radius:4px;padding:.1em .35em;word-break:break-all}\n\
         .verdict{font-size:1.1em;padding:.6em .9em;border-radius:6px;margin:1em 0}\n\
         .pass{background:#e3f4ea;border:1px solid #2e9d5b}.fail{background:#fbe9e8;border:1px solid #c8423b}\n\
         table{border-collapse:collapse;background:#fff;width:100%;font-variant-numeric:tabular-nums}\n\
         th,td{border-bottom:1px solid #dfe3ea;padding:.35em .6em;text-align:right}\n\
         th{background:#eef1f6;font-weight:600}td.why{text-align:left;color:#c8423b}\n\
         tr.ok td:last-child{color:#2e7d4f;text-align:left}tr.capacity{background:#f0f7f2;font-weight:600}\n\
         figure{margin:1em 0;background:#fff;border:1px solid #dfe3ea;border-radius:6px;padding:.4em}\n\
         figure svg{max-width:100%;height:auto;display:block}figcaption{color:#545c6e;font-size:.9em;padding:.3em .5em}\n\
         .muted{color:#545c6e}\n</style></head><body>\n",
    );
    let _ = writeln!(h, "<h1>loopchat load: ramp of {}</h1>", esc(p.unit()));
    let _ = writeln!(h, "<p class=\"muted\"><code>{}</code></p>", esc(command));
    let _ = writeln!(
        h,
        "<p>From {} to {} {} by {}; each step measured for {:?} after the warm-up, on fresh connections. \
         Thresholds: <code>{}</code>; any connection failure, early close or <code>ERR</code> line also fails a step.</p>",
        p.start,
        p.limit,
        esc(p.unit()),
        p.step,
        p.step_duration,
        esc(&slo.join(","))
    );
    let class = if r.capacity().is_some() {
        "pass"
    } else {
        "fail"
    };
    let _ = writeln!(h, "<p class=\"verdict {class}\">{}</p>", esc(&r.verdict()));
    h.push_str("<h2>Steps</h2>\n<table><thead><tr><th>value</th><th>connections</th><th>p50</th><th>p90</th><th>p99</th><th>max</th>\
                <th>msgs/s</th><th>deliveries/s</th><th>loss</th><th style=\"text-align:left\">verdict</th></tr></thead><tbody>\n");
    let cap = r.capacity().map(|c| c.value);
    for st in &r.steps {
        let res = &st.result;
        let l = res.latency.unwrap_or_default();
        let row = if Some(st.value) == cap {
            "ok capacity"
        } else if st.passed() {
            "ok"
        } else {
            "failed"
        };
        let _ = write!(
            h,
            "<tr class=\"{row}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.2}%</td>",
            st.value,
            res.up_peak,
            format_us(l.p50 as f64),
            format_us(l.p90 as f64),
            format_us(l.p99 as f64),
            format_us(l.max as f64),
            res.msgs_per_sec,
            res.deliveries_per_sec,
            res.lost().max(0) as f64 * 100.0 / res.expected.max(1) as f64
        );
        if st.passed() {
            h.push_str("<td>ok</td></tr>\n");
        } else {
            let _ = writeln!(
                h,
                "<td class=\"why\">{}</td></tr>",
                esc(&st.failures.join("; "))
            );
        }
    }
    h.push_str("</tbody></table>\n");
    for (title, caption, svg) in [
        (
            "Latency over time",
            "p50, p90, p99 and max of each second's deliveries; red: the latency thresholds; grey lines: step starts, labelled with the step's value.",
            latency_svg(r),
        ),
        (
            "Throughput over time",
            "Deliveries per second (left axis) and messages sent per second (right axis), including each step's connecting, warm-up and drain.",
            throughput_svg(r),
        ),
        (
            "Latency histogram",
            "Share of each step's measured deliveries per latency bucket (10 per power of ten); darker: later steps.",
            histogram_svg(r),
        ),
    ] {
        let _ = writeln!(h, "<h2>{}</h2><figure>", esc(title));
        match svg {
            Ok(svg) => {
                // Drop the XML prolog if any: the SVG is inline in HTML.
                let start = svg.find("<svg").unwrap_or(0);
                h.push_str(&svg[start..]);
            }
            Err(e) => {
                let _ = write!(h, "<p class=\"why\">{}</p>", esc(&e));
            }
        }
        let _ = writeln!(h, "<figcaption>{}</figcaption></figure>", esc(caption));
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::ramp::{RampPlan, RampWhat, Slo, Step};
    use crate::load::report::{Latency, LoadResult};
    use std::time::Duration;

    fn step(value: f64, ok: bool, offset: f64) -> Step {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        for i in 1..200u64 {
            h.record(i * 50 * value as u64).unwrap();
        }
        let lat = Latency::from_hist(&h);
        let timeline = (1..=3)
            .map(|t| Sample {
                t: t as f64,
                open: 10,
                sent: value as u64,
                delivered: value as u64 * 10,
                latency: lat,
            })
            .collect();
        Step {
            value,
            result: LoadResult {
                hist: Some(h),
                latency: lat,
                timeline,
                ..LoadResult::default()
            },
            failures: if ok {
                vec![]
            } else {
                vec!["p99<5ms (measured <9ms>)".into()]
            },
            offset,
        }
    }

    #[test]
    fn the_report_is_one_offline_document_with_three_plots() {
        let r = RampResult {
            plan: RampPlan {
                what: RampWhat::Rate,
                start: 100.0,
                step: 100.0,
                limit: 300.0,
                step_duration: Duration::from_secs(3),
                slo: Slo::parse("p99<5ms,loss<1%").unwrap(),
            },
            steps: vec![
                step(1.0, true, 0.0),
                step(2.0, true, 3.0),
                step(3.0, false, 6.0),
            ],
        };
        let html = ramp_report(&r, "loopchat load --ramp rate <x>");
        assert!(html.starts_with("<!doctype html>"));
        assert_eq!(html.matches("<svg").count(), 3, "three inline plots");
        assert!(!html.contains("<?xml"));
        // Nothing fetched: no scripts, no links, no external sources.
        for bad in ["<script", "<link", "src=", "url(", "@import"] {
            assert!(!html.contains(bad), "{bad}");
        }
        // Text from outside is escaped.
        assert!(html.contains("&lt;x&gt;") && html.contains("&lt;9ms&gt;"));
        assert!(html.contains("capacity: 2 messages/s"));
        assert!(html.contains("limit p99&lt;5ms"), "the threshold is drawn");
    }
}
