//! CAR slices: reading never panics; a CAR that reads is written back and reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::car::{read_car, write_car};

fuzz_target!(|data: &[u8]| {
    let Ok(car) = read_car(data) else { return };
    let Some(root) = car.roots.first() else { return };
    let blocks: Vec<_> = car.blocks().map(|(c, b)| (*c, b)).collect();
    let again = write_car(root, &blocks).expect("a read CAR writes");
    let reread = read_car(&again).expect("a written CAR reads");
    assert_eq!(reread.blocks().map(|(c, b)| (*c, b)).collect::<Vec<_>>(), blocks);
});
