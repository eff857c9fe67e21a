//! Connecting from a chosen loopback source address (127.0.0.x), so that tens
//! of thousands of connections to one broker port do not run out of
//! ephemeral ports on a single source IP. std has no bind-before-connect, so
//! this talks to libc directly (Linux only).

use smol::Async;
use smol::net::TcpStream;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};

#[cfg(target_os = "linux")]
mod sys {
    use std::ffi::c_void;

    #[repr(C)]
    pub struct SockaddrIn {
        pub sin_family: u16,
        pub sin_port: u16,
        pub sin_addr: u32,
        pub sin_zero: [u8; 8],
    }

    pub const AF_INET: i32 = 2;
    pub const SOCK_STREAM: i32 = 1;
    pub const SOCK_NONBLOCK: i32 = 0o4000;
    pub const SOCK_CLOEXEC: i32 = 0o2000000;
    pub const SOL_IP: i32 = 0;
    pub const IP_BIND_ADDRESS_NO_PORT: i32 = 24;
    pub const EINPROGRESS: i32 = 115;

    unsafe extern "C" {
        pub fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
        pub fn bind(fd: i32, addr: *const SockaddrIn, len: u32) -> i32;
        pub fn connect(fd: i32, addr: *const SockaddrIn, len: u32) -> i32;
        pub fn setsockopt(fd: i32, level: i32, name: i32, value: *const c_void, len: u32) -> i32;
        pub fn close(fd: i32) -> i32;
    }

    pub fn sockaddr(ip: std::net::Ipv4Addr, port: u16) -> SockaddrIn {
        SockaddrIn {
            sin_family: AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: u32::from(ip).to_be(),
            sin_zero: [0; 8],
        }
    }
}

#[cfg(target_os = "linux")]
pub async fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(dst) = dst else {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "source addresses need an IPv4 broker address"));
    };
    let len = std::mem::size_of::<sys::SockaddrIn>() as u32;
    // SAFETY: plain libc calls on a descriptor this function owns; it is
    // closed on every error path and otherwise handed to TcpStream.
    let fd = unsafe { sys::socket(sys::AF_INET, sys::SOCK_STREAM | sys::SOCK_NONBLOCK | sys::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fail = |fd| {
        let e = io::Error::last_os_error();
        unsafe { sys::close(fd) };
        Err(e)
    };
    let one: i32 = 1;
    unsafe {
        sys::setsockopt(fd, sys::SOL_IP, sys::IP_BIND_ADDRESS_NO_PORT, &one as *const i32 as *const _, 4);
        let local = sys::sockaddr(src, 0);
        if sys::bind(fd, &local, len) != 0 {
            return fail(fd);
        }
        let remote = sys::sockaddr(*dst.ip(), dst.port());
        if sys::connect(fd, &remote, len) != 0 && io::Error::last_os_error().raw_os_error() != Some(sys::EINPROGRESS) {
            return fail(fd);
        }
    }
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let stream = Async::new(stream)?;
    stream.writable().await?;
    if let Some(e) = stream.get_ref().take_error()? {
        return Err(e);
    }
    stream.get_ref().peer_addr()?;
    Ok(TcpStream::from(stream))
}

#[cfg(not(target_os = "linux"))]
pub async fn connect_from(_src: Ipv4Addr, _dst: SocketAddr) -> io::Result<TcpStream> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "--source-addrs is only implemented on Linux"))
}
