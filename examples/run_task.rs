//! Runs one task through the orchestrator library and prints how it ended:
//! the smallest embedding of orch. Needs a Docker engine and the offline image
//! (`just image`). Run it with `cargo run -p orch-orchestrator --example run_task`.
//!
//! It uses a throwaway orch home and removes it at the end; the container is
//! removed by the run itself, however it ends.

use std::path::Path;

use orch_orchestrator::{
    Event, GlobalConfig, Home, Observer, Orchestrator, Overrides, Shutdown, TaskRequest,
};

/// Prints the task's output as it comes.
struct Print;

impl Observer for Print {
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Planned { task_id, container } => println!("task {task_id} in {container}"),
            Event::Output { data, .. } => print!("{}", String::from_utf8_lossy(&data)),
            Event::Progress { percent, message } => println!("[{percent:>3}%] {message}"),
            Event::Cleaned { container, elapsed } => {
                println!("removed {container:?} {elapsed:?} after the task ended");
            }
            _ => {}
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    let project = GlobalConfig::default().resolve_project(
        demo.to_str().ok_or("non-UTF-8 path")?,
        &Overrides::default(),
    )?;

    let home_dir = std::env::temp_dir().join(format!("orch-example-{}", std::process::id()));
    let orch = Orchestrator::connect(Home::open(&home_dir)?).await?;

    // Nothing here ever triggers it; a real program would call
    // `shutdown.stop()` on Ctrl+C and `shutdown.force()` on the second.
    let shutdown = Shutdown::new();
    let request = TaskRequest {
        project,
        desc: "echo hello from the library; progress 50 halfway; exit 7".into(),
        name: None,
        stdin: false,
        tty: false,
        git_ref: None,
        keep_workspace: None,
        detached: false,
        task_id: None,
    };
    let outcome = orch.run_task(request, shutdown, Box::new(Print)).await;
    std::fs::remove_dir_all(&home_dir)?;

    let outcome = outcome?;
    println!(
        "status {:?}, exit code {:?}",
        outcome.status, outcome.exit_code
    );
    Ok(())
}
