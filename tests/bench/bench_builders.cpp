// PEC message building and reading bench, without the RSA: prints figures, asserts nothing.
//   bench_builders [seconds per figure = 1] [only the figures whose name contains this]
// Each figure is microseconds of CPU per operation (one thread), for the messages one certified
// message of 2 KB costs the two providers: the four signed messages built (with a signer that
// wraps the entity in a fixed multipart/signed, so that RSA, which `bench_smime` measures, is
// left out), and the parses and reads the stages make. What remains of a provider's CPU per
// message beside its signatures is here and in the spool (bench_spool).
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include "stages/pec/builders.hpp"
#include "stages/pec/postacert.hpp"
#include "stages/pec/reader.hpp"
#include "stages/provider/stages.hpp"

using namespace pecd;
using namespace pecd::pec;

namespace {

double cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// Microseconds of CPU per call of `op`, over about `seconds`.
double micros_per_op(double seconds, const std::function<bool()>& op) {
    size_t n = 0;
    double start = cpu_seconds(), now = start;
    do {
        for (int i = 0; i < 20; ++i) {
            if (!op()) {
                std::fprintf(stderr, "operation failed\n");
                std::exit(1);
            }
            ++n;
        }
        now = cpu_seconds();
    } while (now - start < seconds);
    return 1e6 * (now - start) / static_cast<double>(n);
}

// What a detached S/MIME signer returns, with a fixed 2 KB "signature": the same shape and
// about the same size, no RSA.
Result<std::string> fake_signer(std::string_view entity) {
    static const std::string p7s = [] {
        std::string line(76, 'A');
        std::string s;
        for (int i = 0; i < 30; ++i) s += line + "\r\n";
        return s;
    }();
    std::string out =
        "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; "
        "micalg=\"sha-256\"; boundary=\"----BENCHBOUNDARY\"\r\n\r\n"
        "This is an S/MIME signed message\r\n\r\n------BENCHBOUNDARY\r\n";
    out.append(entity);
    out +=
        "\r\n------BENCHBOUNDARY\r\nContent-Type: application/pkcs7-signature; "
        "name=\"smime.p7s\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: "
        "attachment; filename=\"smime.p7s\"\r\n\r\n" +
        p7s + "\r\n------BENCHBOUNDARY--\r\n";
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    double seconds = argc > 1 ? std::atof(argv[1]) : 1.0;
    auto templates = TemplateSet::load(PECD_SOURCE_DIR "/conf/templates");
    auto ids = IdentificativoGenerator::create("pec.alpha.test", "bench");
    if (!templates || !ids) {
        std::fprintf(stderr, "cannot load the templates or make the id generator\n");
        return 1;
    }
    MessageBuilder builder({"Gestore Alpha", "pec.alpha.test"},
                           std::make_shared<TemplateSet>(std::move(*templates)), fake_signer,
                           std::shared_ptr<IdentificativoGenerator>(std::move(*ids)));

    std::string body;
    for (int i = 0; body.size() < 2048; ++i)
        body += "Riga " + std::to_string(i) + " del messaggio di prova, testo semplice.\r\n";
    const std::string original =
        "From: mario@pec.alpha.test\r\nTo: anna@pec.beta.test\r\nSubject: Fattura 1\r\n"
        "Message-ID: <Fatt.1@client.test>\r\nDate: Sun, 22 Nov 2026 12:00:00 +0100\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" +
        body;
    Transaction t;
    t.time = PecTime{std::chrono::system_clock::now()};
    t.identificativo = "opec21.20261122.bench@pec.alpha.test";
    t.original.sender = "mario@pec.alpha.test";
    t.original.recipients = {{"anna@pec.beta.test", RecipientKind::certificato, AddressField::to}};
    t.original.subject = "Fattura 1";
    t.original.message_id = "<Fatt.1@client.test>";

    auto busta = builder.busta_trasporto(t, original);
    if (!busta) {
        std::fprintf(stderr, "busta: %s\n", busta.error().describe().c_str());
        return 1;
    }
    auto postacert = provider::extract_postacert(busta->bytes);
    if (!postacert) {
        std::fprintf(stderr, "postacert: %s\n", postacert.error().describe().c_str());
        return 1;
    }

    std::printf("microseconds of CPU per operation (RSA left out), 2 KB message:\n");
    struct Figure {
        const char* name;
        std::function<bool()> op;
    };
    const Figure figures[] = {
        {"parse submission (GMime)", [&] { return ParsedMessage::parse(original).has_value(); }},
        {"build accettazione", [&] { return builder.accettazione(t).has_value(); }},
        {"build busta di trasporto",
         [&] { return builder.busta_trasporto(t, original).has_value(); }},
        {"parse busta (GMime)", [&] { return ParsedMessage::parse(busta->bytes).has_value(); }},
        {"parse + read busta",
         [&] {
             auto p = ParsedMessage::parse(busta->bytes);
             return p && read_pec_message(*p).has_value();
         }},
        {"extract postacert",
         [&] { return provider::extract_postacert(busta->bytes).has_value(); }},
        {"build presa in carico",
         [&] {
             return builder
                 .presa_in_carico(t, "posta-certificata@pec.alpha.test", {"anna@pec.beta.test"})
                 .has_value();
         }},
        {"build avvenuta consegna (completa)",
         [&] {
             return builder.avvenuta_consegna(t, "anna@pec.beta.test", *postacert).has_value();
         }},
    };
    const std::string only = argc > 2 ? argv[2] : "";
    for (const auto& f : figures)
        if (std::string(f.name).find(only) != std::string::npos)
            std::printf("  %-36s %8.1f\n", f.name, micros_per_op(seconds, f.op));
    return 0;
}
