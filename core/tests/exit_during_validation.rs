//! A process that exits while the libxml2 thread validates must not crash. The test runs
//! itself as a child many times (`CLACKS_EXIT_RACE` set): the child keeps the validator
//! busy with documents from another thread and exits at once, as a one-shot `clacks
//! call` does when its last events are still being checked.

use std::process::Command;

use clacks_core::events::{EventValidator, envelope};

const CHILD_ENV: &str = "CLACKS_EXIT_RACE";

#[test]
fn exit_race_child() {
    let Ok(quiesce) = std::env::var(CHILD_ENV) else { return };
    let validator = EventValidator::start(&[]).expect("validator");
    let ids: String = (0..2000).map(|i| format!("<Id>n{i}</Id>")).collect();
    let busy = envelope("NodeLeave", &ids);
    std::thread::spawn(move || {
        loop {
            let _ = validator.validate_blocking(busy.as_bytes());
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(20));
    if quiesce == "1" {
        clacks_core::events::schema::quiesce();
    }
    std::process::exit(0);
}

#[test]
fn exiting_while_validating_never_crashes() {
    // Without the gate about 1 run in 80 died with SIGSEGV here; 400 runs make a
    // regression all but certain to show.
    let exe = std::env::current_exe().expect("test binary");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let exe = exe.clone();
            std::thread::spawn(move || {
                (0..100)
                    .filter_map(|_| {
                        let output = Command::new(&exe)
                            .args(["--exact", "exit_race_child", "--nocapture", "--test-threads=1"])
                            .env(CHILD_ENV, "1")
                            .output()
                            .expect("child");
                        (!output.status.success()).then_some(output.status)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let abnormal: Vec<_> = workers.into_iter().flat_map(|w| w.join().expect("worker")).collect();
    assert!(abnormal.is_empty(), "abnormal exits: {abnormal:?}");
}
