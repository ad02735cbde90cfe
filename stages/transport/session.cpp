#include "stages/transport/session.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>
#include <utility>

namespace pecd::transport {
namespace {

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
    return left <= 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
}

// Waits for `events` on fd until the deadline; false on timeout.
Result<bool> wait_for(int fd, short events, Clock::time_point deadline) {
    for (;;) {
        pollfd pfd{fd, events, 0};
        int rc = ::poll(&pfd, 1, remaining_ms(deadline));
        if (rc > 0) return true;
        if (rc == 0) return false;
        if (errno != EINTR) return fail_errno("poll");
    }
}

Result<durable::Fd> connect_socket(const sockaddr* addr, socklen_t len, int family,
                                   Clock::time_point deadline, const std::string& what) {
    durable::Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) return fail(ErrorKind::transient, "socket for " + what + ": " + std::strerror(errno));
    if (::connect(fd.get(), addr, len) != 0) {
        if (errno != EINPROGRESS)
            return fail(ErrorKind::transient, "connect " + what + ": " + std::strerror(errno),
                        errno);
        auto ready = wait_for(fd.get(), POLLOUT, deadline);
        if (!ready) return std::unexpected(ready.error());
        if (!*ready) return fail(ErrorKind::transient, "connect " + what + ": timed out");
        int err = 0;
        socklen_t err_len = sizeof err;
        ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &err_len);
        if (err != 0)
            return fail(ErrorKind::transient, "connect " + what + ": " + std::strerror(err), err);
    }
    return fd;
}

bool all_digits(std::string_view s) {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

// "5.1.1" style: class digit, subject 1-3 digits, detail 1-3 digits (RFC 3463 §2).
bool is_enhanced_status(std::string_view s) {
    if (s.size() < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.') return false;
    auto dot = s.find('.', 2);
    if (dot == std::string_view::npos) return false;
    auto subject = s.substr(2, dot - 2);
    auto detail = s.substr(dot + 1);
    return all_digits(subject) && subject.size() <= 3 && all_digits(detail) && detail.size() <= 3;
}

}  // namespace

std::string Endpoint::describe() const {
    if (!unix_path.empty()) return "unix:" + unix_path;
    if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
    return host + ":" + std::to_string(port);
}

Result<Endpoint> parse_endpoint(std::string_view text, int default_port) {
    Endpoint ep;
    if (text.starts_with("unix:")) {
        ep.unix_path = std::string(text.substr(5));
        if (ep.unix_path.empty() || ep.unix_path.size() >= sizeof(sockaddr_un{}.sun_path))
            return fail(ErrorKind::config, "bad unix socket path in '" + std::string(text) + "'");
        return ep;
    }
    std::string_view port_text;
    if (text.starts_with("[")) {
        auto close = text.find(']');
        if (close == std::string_view::npos)
            return fail(ErrorKind::config, "unterminated [ in '" + std::string(text) + "'");
        ep.host = std::string(text.substr(1, close - 1));
        auto rest = text.substr(close + 1);
        if (!rest.empty()) {
            if (rest[0] != ':')
                return fail(ErrorKind::config,
                            "expected :port after ] in '" + std::string(text) + "'");
            port_text = rest.substr(1);
        }
    } else {
        auto colon = text.rfind(':');
        if (colon != std::string_view::npos) {
            ep.host = std::string(text.substr(0, colon));
            port_text = text.substr(colon + 1);
        } else {
            ep.host = std::string(text);
        }
    }
    if (ep.host.empty())
        return fail(ErrorKind::config, "no host in endpoint '" + std::string(text) + "'");
    if (port_text.empty()) {
        ep.port = default_port;
    } else {
        auto [p, ec] =
            std::from_chars(port_text.data(), port_text.data() + port_text.size(), ep.port);
        if (ec != std::errc() || p != port_text.data() + port_text.size()) ep.port = 0;
    }
    if (ep.port <= 0 || ep.port > 65535)
        return fail(ErrorKind::config,
                    "bad or missing port in endpoint '" + std::string(text) + "'");
    return ep;
}

Result<Connection> Connection::open(const Endpoint& endpoint, Millis timeout) {
    auto deadline = Clock::now() + timeout;
    std::string what = endpoint.describe();
    if (!endpoint.unix_path.empty()) {
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::memcpy(addr.sun_path, endpoint.unix_path.data(), endpoint.unix_path.size());
        auto fd = connect_socket(reinterpret_cast<sockaddr*>(&addr), sizeof addr, AF_UNIX, deadline,
                                 what);
        if (!fd) return std::unexpected(fd.error());
        Connection c;
        c.fd_ = std::move(*fd);
        c.peer_ = what;
        return c;
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* list = nullptr;
    std::string port = std::to_string(endpoint.port);
    int rc = ::getaddrinfo(endpoint.host.c_str(), port.c_str(), &hints, &list);
    if (rc != 0) return fail(ErrorKind::transient, "resolve " + what + ": " + ::gai_strerror(rc));
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(list, &::freeaddrinfo);
    Error last{ErrorKind::transient, "connect " + what + ": no address"};
    for (addrinfo* ai = list; ai; ai = ai->ai_next) {
        auto fd = connect_socket(ai->ai_addr, ai->ai_addrlen, ai->ai_family, deadline, what);
        if (fd) {
            Connection c;
            c.fd_ = std::move(*fd);
            c.peer_ = what;
            return c;
        }
        last = fd.error();
    }
    return std::unexpected(last);
}

Status Connection::write(std::string_view data, Millis timeout) {
    auto deadline = Clock::now() + timeout;
    while (!data.empty()) {
        ssize_t n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
        if (n > 0) {
            data.remove_prefix(static_cast<size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            auto ready = wait_for(fd_.get(), POLLOUT, deadline);
            if (!ready) return std::unexpected(ready.error());
            if (!*ready) return fail(ErrorKind::transient, "write to " + peer_ + ": timed out");
            continue;
        }
        return fail(ErrorKind::transient, "write to " + peer_ + ": " + std::strerror(errno), errno);
    }
    return {};
}

Result<bool> Connection::fill(Millis timeout) {
    auto deadline = Clock::now() + timeout;
    char buf[16384];
    for (;;) {
        ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
        if (n > 0) {
            buffer_.append(buf, static_cast<size_t>(n));
            return true;
        }
        if (n == 0) return false;  // the peer closed its side
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return fail(ErrorKind::transient, "read from " + peer_ + ": " + std::strerror(errno),
                        errno);
        auto ready = wait_for(fd_.get(), POLLIN, deadline);
        if (!ready) return std::unexpected(ready.error());
        if (!*ready) return fail(ErrorKind::transient, "read from " + peer_ + ": timed out");
    }
}

Result<std::string> Connection::read_until(char terminator, Millis timeout, size_t max) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
        auto pos = buffer_.find(terminator);
        if (pos != std::string::npos) {
            std::string out = buffer_.substr(0, pos);
            buffer_.erase(0, pos + 1);
            return out;
        }
        if (buffer_.size() > max)
            return fail(ErrorKind::transient,
                        peer_ + " sent a reply longer than " + std::to_string(max) + " bytes");
        auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
        if (left.count() <= 0)
            return fail(ErrorKind::transient, "read from " + peer_ + ": timed out");
        auto more = fill(left);
        if (!more) return std::unexpected(more.error());
        if (!*more) {
            // A peer that answers and closes (clamd) still gave us its last words.
            if (buffer_.empty())
                return fail(ErrorKind::transient, peer_ + " closed the connection");
            return std::exchange(buffer_, {});
        }
    }
}

Result<std::string> Connection::read_line(Millis timeout, size_t max) {
    auto line = read_until('\n', timeout, max);
    if (line && !line->empty() && line->back() == '\r') line->pop_back();
    return line;
}

const char* to_string(Disposition d) {
    switch (d) {
        case Disposition::accepted:
            return "accepted";
        case Disposition::transient_failure:
            return "transient";
        case Disposition::permanent_failure:
            return "permanent";
    }
    return "?";
}

Disposition Reply::disposition() const {
    if (code >= 200 && code < 400) return Disposition::accepted;
    if (code >= 400 && code < 500) return Disposition::transient_failure;
    return Disposition::permanent_failure;
}

std::string Reply::describe() const {
    return std::to_string(code) + " " + status + (text.empty() ? "" : " " + text);
}

Result<Reply> read_reply(Connection& conn, Millis timeout) {
    auto deadline = Clock::now() + timeout;
    Reply reply;
    for (int lines = 0;; ++lines) {
        if (lines > 1000) return fail(ErrorKind::transient, conn.peer() + ": endless reply");
        auto left =
            std::max(Millis(1), std::chrono::duration_cast<Millis>(deadline - Clock::now()));
        auto line = conn.read_line(left);
        if (!line) return std::unexpected(line.error());
        int code = 0;
        if (line->size() < 3 || !all_digits(std::string_view(*line).substr(0, 3)) ||
            (line->size() > 3 && (*line)[3] != ' ' && (*line)[3] != '-'))
            return fail(ErrorKind::transient,
                        conn.peer() + " sent a malformed reply: '" + line->substr(0, 200) + "'");
        std::from_chars(line->data(), line->data() + 3, code);
        if (lines > 0 && code != reply.code)
            return fail(ErrorKind::transient, conn.peer() + " changed the code within a reply");
        reply.code = code;
        std::string_view text = line->size() > 4 ? std::string_view(*line).substr(4) : "";
        auto space = text.find(' ');
        auto first = text.substr(0, space);
        if (is_enhanced_status(first) && first[0] == line->front()) {
            if (reply.status.empty()) reply.status = std::string(first);
            text = space == std::string_view::npos ? "" : text.substr(space + 1);
        }
        if (!text.empty()) {
            if (!reply.text.empty()) reply.text += "; ";
            reply.text += text;
        }
        if (line->size() == 3 || (*line)[3] == ' ') break;
    }
    // Servers without ENHANCEDSTATUSCODES: use the generic code of the class (RFC 3463 §3.1).
    if (reply.status.empty()) reply.status = std::to_string(reply.code / 100) + ".0.0";
    return reply;
}

std::string dot_stuff(std::string_view message) {
    std::string out;
    out.reserve(message.size() + message.size() / 64 + 8);
    bool line_start = true;
    for (size_t i = 0; i < message.size(); ++i) {
        char c = message[i];
        if (line_start && c == '.') out.push_back('.');
        if (c == '\n' && (i == 0 || message[i - 1] != '\r')) out.push_back('\r');
        out.push_back(c);
        line_start = c == '\n';
    }
    if (!out.empty() && !line_start) out += "\r\n";
    out += ".\r\n";
    return out;
}

Error reply_error(const Reply& reply, std::string_view during) {
    ErrorKind kind = reply.disposition() == Disposition::transient_failure ? ErrorKind::transient
                                                                           : ErrorKind::permanent;
    return Error{kind, std::string(during) + ": " + reply.describe()};
}

Result<MailSession> MailSession::start(const Endpoint& endpoint, bool lmtp, std::string helo_name,
                                       Timeouts timeouts) {
    auto conn = Connection::open(endpoint, timeouts.connect);
    if (!conn) return std::unexpected(conn.error());
    MailSession s(std::move(*conn));
    s.timeouts_ = timeouts;
    auto greeting = read_reply(s.conn_, timeouts.command);
    if (!greeting) return std::unexpected(greeting.error());
    // A 554 greeting means "no service here" (RFC 5321 §3.1): try again later, not a bounce.
    if (greeting->code != 220) {
        Error e = reply_error(*greeting, endpoint.describe() + " greeting");
        e.kind = ErrorKind::transient;
        return std::unexpected(e);
    }
    auto hello = s.command((lmtp ? "LHLO " : "EHLO ") + helo_name);
    if (!hello) return std::unexpected(hello.error());
    // A server without ESMTP refuses EHLO as an unknown command: fall back to HELO (RFC 5321
    // §3.2) and use no extensions.
    if (!lmtp && (hello->code == 500 || hello->code == 502)) {
        auto helo = s.command("HELO " + helo_name);
        if (!helo) return std::unexpected(helo.error());
        if (helo->code != 250)
            return std::unexpected(reply_error(*helo, endpoint.describe() + " HELO"));
        return s;
    }
    if (hello->code != 250)
        return std::unexpected(
            reply_error(*hello, endpoint.describe() + (lmtp ? " LHLO" : " EHLO")));
    // The reply text lines after the first one are the extension keywords.
    std::string_view all = hello->text;
    for (size_t pos = 0; pos <= all.size();) {
        auto end = all.find("; ", pos);
        auto item = all.substr(pos, end == std::string_view::npos ? all.npos : end - pos);
        std::string word(item.substr(0, item.find(' ')));
        std::transform(word.begin(), word.end(), word.begin(),
                       [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
        s.extensions_.push_back(std::move(word));
        if (end == std::string_view::npos) break;
        pos = end + 2;
    }
    return s;
}

bool MailSession::has_extension(std::string_view keyword) const {
    return std::find(extensions_.begin(), extensions_.end(), keyword) != extensions_.end();
}

Result<Reply> MailSession::command(std::string_view line) {
    std::string out(line);
    out += "\r\n";
    if (auto st = conn_.write(out, timeouts_.command); !st) return std::unexpected(st.error());
    return read_reply(conn_, timeouts_.command);
}

Result<std::vector<Reply>> MailSession::data(std::string_view message, size_t replies) {
    auto go = command("DATA");
    if (!go) return std::unexpected(go.error());
    if (go->code != 354) return std::vector<Reply>(replies, *go);
    if (auto st = conn_.write(dot_stuff(message), timeouts_.data); !st)
        return std::unexpected(st.error());
    std::vector<Reply> out;
    for (size_t i = 0; i < replies; ++i) {
        auto r = read_reply(conn_, timeouts_.data);
        if (!r && i == 0) return std::unexpected(r.error());
        if (!r) {
            // LMTP: the first recipients are already delivered; only the rest get a retry.
            out.resize(replies, Reply{451, "4.4.2", "connection lost: " + r.error().message});
            break;
        }
        out.push_back(std::move(*r));
    }
    return out;
}

void MailSession::quit() {
    (void)command("QUIT");
}

}  // namespace pecd::transport
