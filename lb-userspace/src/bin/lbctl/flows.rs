//! `lbctl flows`: printed as lbd streams it, a piece at a time, so a large answer needs neither lbd nor lbctl to
//! hold all of it.

use std::io::Write;

use lb_userspace::cli::lbctl::FlowsArgs;
use lb_userspace::control::api::FlowInfo;
use lb_userspace::control::{Client, Request, Response};

use crate::{Ctx, DaemonSaidNo, output, unexpected};

pub fn run(ctx: &Ctx, args: FlowsArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(&ctx.socket)?;
    let mut printer = Printer::new(ctx.json);
    let last = client.call_streamed(&Request::Flows { limit: args.limit }, |part| {
        if let Response::FlowsPart(flows) = part {
            printer.rows(&flows);
        }
    })?;
    match last {
        Response::Flows(flows) => {
            printer.rows(&flows);
            printer.finish();
            Ok(())
        }
        // Whatever was printed stays: the rows are real, the answer is cut short, and the exit status says so.
        Response::Error { message } => Err(DaemonSaidNo(message).into()),
        other => Err(unexpected(other)),
    }
}

/// Rows out as they come: a JSON array with one entry per line, or a table whose columns widen when a wider row
/// arrives.
struct Printer {
    json: bool,
    started: bool,
    table: output::StreamTable,
}

impl Printer {
    fn new(json: bool) -> Printer {
        Printer {
            json,
            started: false,
            table: output::StreamTable::new(&["proto", "source", "destination", "backend", "id"]),
        }
    }

    fn rows(&mut self, flows: &[FlowInfo]) {
        if self.json {
            let mut out = std::io::stdout().lock();
            for f in flows {
                let sep = if self.started { "," } else { "[" };
                self.started = true;
                let entry = serde_json::to_string(f).expect("a flow serializes");
                let _ = writeln!(out, "{sep}{entry}");
            }
            return;
        }
        let rows: Vec<Vec<String>> = flows
            .iter()
            .map(|f| {
                vec![
                    crate::simulate::proto_name(f.flow.protocol),
                    f.flow.src.to_string(),
                    f.flow.dst.to_string(),
                    f.backend
                        .map(|b| b.to_string())
                        .unwrap_or_else(|| "?".into()),
                    f.backend_id.to_string(),
                ]
            })
            .collect();
        self.table.rows(&rows);
    }

    fn finish(&mut self) {
        if self.json {
            println!("{}]", if self.started { "" } else { "[" });
        } else {
            self.table.finish();
        }
    }
}
