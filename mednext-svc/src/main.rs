/// mimalloc, keeping freed memory for the next study: see `ct_service::alloc`.
#[global_allocator]
static ALLOCATOR: model_server::alloc::Allocator = model_server::alloc::Allocator;

fn main() -> std::process::ExitCode {
    model_server::cli::main::<mednext_svc::Mednext>()
}
