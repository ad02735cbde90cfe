#include "stages/pec/reader.hpp"

#include <glib.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using namespace pecd;
using namespace pecd::pec;

namespace {

const std::string kReal = std::string(PECD_SHARED_DIR) + "/fixtures/real/";

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

PecMessageInfo read_fixture(const std::string& name) {
    std::string raw = slurp(kReal + name);
    EXPECT_FALSE(raw.empty()) << name;
    auto info = read_pec_message(raw);
    EXPECT_TRUE(info.has_value()) << name << ": " << (info ? "" : info.error().message);
    return info ? *info : PecMessageInfo{};
}

bool has_problem(const PecMessageInfo& info, const std::string& part) {
    return std::any_of(info.problems.begin(), info.problems.end(),
                       [&](const std::string& p) { return p.find(part) != std::string::npos; });
}

std::string problems_of(const PecMessageInfo& info) {
    std::string out;
    for (const auto& p : info.problems) out += "  - " + p + "\n";
    return out;
}

std::vector<std::string> part_names(const std::vector<PartInfo>& parts) {
    std::vector<std::string> out;
    for (const auto& p : parts) out.push_back(p.content_type + ":" + p.filename);
    return out;
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Real provider messages (fixtures/real/README.md)

TEST(ReaderReal, EveryFixtureIsCovered) {
    // A new fixture must get its own test below.
    std::set<std::string> covered = {
        "anon-accettazione.eml",       "anon-avvenuta-consegna-sha256.eml",
        "anon-busta-sha256.eml",       "anon-errore-consegna.eml",
        "aruba-accettazione-2018.eml", "aruba-avvenuta-consegna-2018.eml",
        "sogei-busta-breve-2018.eml",
    };
    for (const auto& entry : std::filesystem::directory_iterator(kReal)) {
        if (entry.path().extension() != ".eml") continue;
        EXPECT_TRUE(covered.contains(entry.path().filename().string())) << entry.path();
    }
}

TEST(ReaderReal, ArubaAccettazione) {
    PecMessageInfo m = read_fixture("aruba-accettazione-2018.eml");
    EXPECT_EQ(m.type, MessageType::accettazione);
    EXPECT_EQ(m.headers.x_ricevuta, "accettazione");
    EXPECT_FALSE(m.headers.x_trasporto);
    EXPECT_EQ(m.headers.x_riferimento_message_id,
              "<1542123565.921546936035156.464602125997431-openerp-8-fatturapa.attachment.out@"
              "elbati-Vostro-3550>");
    EXPECT_EQ(m.headers.subject, "ACCETTAZIONE: IT03339130126_00009.xml");
    EXPECT_EQ(m.headers.message_id, "<opec288.20181113163926.01838.310.1.358.63@pec.aruba.it>");
    EXPECT_EQ(m.headers.date, "Tue, 13 Nov 2018 16:39:26 +0100");
    EXPECT_EQ(m.from_address, "posta-certificata@pec.aruba.it");
    EXPECT_EQ(m.to_addresses, std::vector<std::string>{"l.battistini@pec.it"});
    ASSERT_TRUE(m.date);
    EXPECT_EQ(std::chrono::system_clock::to_time_t(*m.date), 1542123566);  // 15:39:26Z
    EXPECT_TRUE(m.is_signed);
    EXPECT_EQ(m.signature_protocol, "application/x-pkcs7-signature");
    EXPECT_EQ(m.micalg, "sha1");
    EXPECT_TRUE(m.has_signature_part);

    ASSERT_TRUE(m.daticert) << m.daticert_error.value_or("");
    const Daticert& d = *m.daticert;
    EXPECT_EQ(d.tipo, DaticertType::accettazione);
    EXPECT_EQ(d.errore, DaticertError::nessuno);
    EXPECT_EQ(d.mittente, "l.battistini@pec.it");
    EXPECT_EQ(d.destinatari,
              (std::vector<Recipient>{{"l.battistini@pec.it", RecipientKind::certificato}}));
    EXPECT_EQ(d.risposte, "l.battistini@pec.it");
    EXPECT_EQ(d.oggetto, "IT03339130126_00009.xml");
    EXPECT_EQ(d.gestore_emittente, "ARUBA PEC S.p.A.");
    EXPECT_EQ(d.giorno, "13/11/2018");
    EXPECT_EQ(d.ora, "16:39:26");
    EXPECT_EQ(d.zona, "+0100");
    EXPECT_EQ(d.identificativo, "opec288.20181113163926.01838.310.1.63@pec.aruba.it");
    EXPECT_EQ(d.msgid, m.headers.x_riferimento_message_id);
    EXPECT_FALSE(d.ricevuta);  // DECISIONS #7: Aruba omits it
    EXPECT_FALSE(d.consegna);
    EXPECT_FALSE(m.original);
    EXPECT_EQ(part_names(m.parts),
              (std::vector<std::string>{"text/plain:", "text/html:", "application/xml:daticert.xml",
                                        "application/x-pkcs7-signature:smime.p7s"}));
    EXPECT_TRUE(m.problems.empty()) << problems_of(m);
}

TEST(ReaderReal, ArubaAvvenutaConsegnaCompleta) {
    PecMessageInfo m = read_fixture("aruba-avvenuta-consegna-2018.eml");
    EXPECT_EQ(m.type, MessageType::avvenuta_consegna);
    EXPECT_EQ(m.headers.subject, "CONSEGNA: IT03339130126_00009.xml");
    EXPECT_EQ(m.headers.message_id, "<opec288.20181113163927.28978.421.1.413.72@pec.aruba.it>");
    EXPECT_EQ(m.micalg, "sha1");
    EXPECT_TRUE(m.has_signature_part);

    ASSERT_TRUE(m.daticert) << m.daticert_error.value_or("");
    const Daticert& d = *m.daticert;
    EXPECT_EQ(d.tipo, DaticertType::avvenuta_consegna);
    EXPECT_EQ(d.mittente, "l.battistini@pec.it");
    EXPECT_EQ(d.destinatari,
              (std::vector<Recipient>{{"l.battistini@pec.it", RecipientKind::certificato}}));
    EXPECT_EQ(d.gestore_emittente, "ARUBA PEC S.p.A.");
    EXPECT_EQ(d.giorno, "13/11/2018");
    EXPECT_EQ(d.ora, "16:39:27");
    // The identificativo of a receipt is that of the busta, not the receipt's Message-ID.
    EXPECT_EQ(d.identificativo, "opec288.20181113163926.01838.310.1.63@pec.aruba.it");
    EXPECT_EQ(d.msgid,
              "<1542123565.921546936035156.464602125997431-openerp-8-fatturapa.attachment.out@"
              "elbati-Vostro-3550>");
    EXPECT_EQ(d.ricevuta, ReceiptKind::completa);
    EXPECT_EQ(d.consegna, "l.battistini@pec.it");

    ASSERT_TRUE(m.original);
    EXPECT_EQ(m.original->filename, "postacert.eml");
    EXPECT_EQ(m.original->subject, "IT03339130126_00009.xml");
    EXPECT_EQ(m.original->message_id, "<opec288.20181113163926.01838.310.1.63@pec.aruba.it>");
    EXPECT_EQ(m.original->riferimento_message_id, d.msgid);
    EXPECT_EQ(part_names(m.original->parts),
              (std::vector<std::string>{"text/html:",
                                        "application/octet-stream:IT03339130126_00009.xml"}));
    EXPECT_EQ(m.original->hash_parts, 0u);
    EXPECT_TRUE(m.problems.empty()) << problems_of(m);
}

TEST(ReaderReal, SogeiBustaBreve) {
    PecMessageInfo m = read_fixture("sogei-busta-breve-2018.eml");
    EXPECT_EQ(m.type, MessageType::busta_trasporto);
    EXPECT_EQ(m.headers.x_trasporto, "posta-certificata");
    EXPECT_EQ(m.headers.x_tipo_ricevuta, "breve");  // sent as "X-Tiporicevuta"
    EXPECT_EQ(m.tipo_ricevuta, ReceiptKind::breve);
    EXPECT_EQ(m.headers.reply_to, "sdi03@pec.fatturapa.it");
    EXPECT_EQ(m.from_address, "posta-certificata@pcert.sogei.it");
    EXPECT_EQ(m.from_name, "Per conto di: sdi03@pec.fatturapa.it");
    EXPECT_EQ(m.headers.x_riferimento_message_id,
              "<4163125586355393.1544268377979@pec.fatturapa.it>");

    ASSERT_TRUE(m.daticert) << m.daticert_error.value_or("");
    const Daticert& d = *m.daticert;
    EXPECT_EQ(d.tipo, DaticertType::posta_certificata);
    EXPECT_EQ(d.mittente, "sdi03@pec.fatturapa.it");
    EXPECT_EQ(d.destinatari,
              (std::vector<Recipient>{{"l.battistini@pec.it", RecipientKind::certificato}}));
    EXPECT_EQ(d.oggetto, "Invio File 7339338 (SIMULAZIONE)");
    EXPECT_EQ(d.gestore_emittente, "Sogei SpA");
    EXPECT_EQ(d.giorno, "08/12/2018");
    EXPECT_EQ(d.ora, "12:26:18");
    EXPECT_EQ(d.identificativo, "opec288.20181208122618.17535.2665.1.3@pcert.sogei.it");
    EXPECT_EQ(d.msgid, "<4163125586355393.1544268377979@pec.fatturapa.it>");
    EXPECT_EQ(d.ricevuta, ReceiptKind::breve);

    ASSERT_TRUE(m.original);
    EXPECT_EQ(m.original->subject, "Invio File 7339338 (SIMULAZIONE)");
    EXPECT_EQ(m.original->message_id, "<opec288.20181208122618.17535.2665.1.3@pcert.sogei.it>");
    EXPECT_EQ(m.original->riferimento_message_id,
              "<4163125586355393.1544268377979@pec.fatturapa.it>");
    EXPECT_EQ(m.original->x_tipo_ricevuta, "breve");
    // A busta carries the attachments themselves; only the breve *receipt* hashes them.
    EXPECT_EQ(part_names(m.original->parts),
              (std::vector<std::string>{"application/octet-stream:IT02652600210_00007_MT_002.xml",
                                        "application/octet-stream:IT02652600210_00007.xml",
                                        "text/plain:"}));
    EXPECT_TRUE(m.problems.empty()) << problems_of(m);
}

TEST(ReaderReal, AnonAccettazioneWithoutSignaturePart) {
    PecMessageInfo m = read_fixture("anon-accettazione.eml");
    EXPECT_EQ(m.type, MessageType::accettazione);
    EXPECT_TRUE(m.is_signed);
    EXPECT_FALSE(m.has_signature_part);
    ASSERT_TRUE(m.daticert) << m.daticert_error.value_or("");
    const Daticert& d = *m.daticert;
    EXPECT_EQ(d.tipo, DaticertType::accettazione);
    EXPECT_EQ(d.mittente, "sender@fakepec.it");
    EXPECT_EQ(d.destinatari,
              (std::vector<Recipient>{{"rec@fakepec.it", RecipientKind::certificato}}));
    EXPECT_EQ(d.oggetto, "Test PEC");
    EXPECT_EQ(d.gestore_emittente, "FAKEPEC PEC S.p.A.");
    EXPECT_EQ(d.giorno, "15/11/2024");
    EXPECT_EQ(d.ora, "18:20:38");
    EXPECT_EQ(d.identificativo, "opec210312.20241115182038.288127.606.1.53@fakepec.it");
    EXPECT_EQ(d.msgid, "<SN05IE$951DEC16C1CFD3E4FD8FF1B1D24A99AE@fakepec.it>");
    EXPECT_EQ(m.problems, std::vector<std::string>{"multipart/signed has no signature part: the "
                                                   "signature cannot be verified"});
}

TEST(ReaderReal, AnonErroreConsegnaWithInvalidDaticert) {
    // Decision: parse_daticert is strict (element content allows no text), so the stray "a"
    // after </risposte> makes daticert unusable. The message is still classified by its headers;
    // the defect is in daticert_error and in problems, and `daticert` stays empty rather than
    // half-read.
    PecMessageInfo m = read_fixture("anon-errore-consegna.eml");
    EXPECT_EQ(m.type, MessageType::errore_consegna);
    EXPECT_EQ(m.headers.x_ricevuta, "errore-consegna");
    EXPECT_EQ(m.headers.subject, "AVVISO DI MANCATA CONSEGNA: Test PEC");
    EXPECT_EQ(m.headers.x_riferimento_message_id,
              "<SN05IE$951DEC16C1CFD3E4FD8FF1B1D24A99AE@pec.it>");
    EXPECT_TRUE(m.has_daticert);
    EXPECT_FALSE(m.daticert);
    ASSERT_TRUE(m.daticert_error);
    EXPECT_EQ(*m.daticert_error, "daticert: unexpected text \"a\" in <intestazione>");
    EXPECT_TRUE(has_problem(m, "daticert.xml is invalid")) << problems_of(m);
    // The raw document is kept for display; its values are not trusted.
    ASSERT_TRUE(m.daticert_xml);
    EXPECT_NE(m.daticert_xml->find("<postacert tipo=\"errore-consegna\" errore=\"no-dest\">"),
              std::string::npos);
    EXPECT_NE(m.daticert_xml->find(
                  "<errore-esteso>5.1.1 - FAKE Pec S.p.A. - indirizzo non valido</errore-esteso>"),
              std::string::npos);
    EXPECT_TRUE(has_problem(m, "no signature part")) << problems_of(m);
    EXPECT_FALSE(m.original);
}

TEST(ReaderReal, AnonAvvenutaConsegnaSha256) {
    PecMessageInfo m = read_fixture("anon-avvenuta-consegna-sha256.eml");
    EXPECT_EQ(m.type, MessageType::avvenuta_consegna);
    EXPECT_EQ(m.signature_protocol, "application/pkcs7-signature");
    EXPECT_EQ(m.micalg, "sha-256");
    EXPECT_TRUE(m.has_signature_part);
    ASSERT_TRUE(m.daticert) << m.daticert_error.value_or("");
    const Daticert& d = *m.daticert;
    EXPECT_EQ(d.tipo, DaticertType::avvenuta_consegna);
    EXPECT_EQ(d.mittente, "example.example.com");  // anonymised, not an address
    EXPECT_EQ(d.destinatari,
              (std::vector<Recipient>{{"example.example.com", RecipientKind::certificato}}));
    EXPECT_EQ(d.gestore_emittente, "example");
    EXPECT_EQ(d.giorno, "13/05/2021");
    EXPECT_EQ(d.ora, "14:35:30");
    EXPECT_EQ(d.zona, "+0200");
    EXPECT_EQ(d.identificativo, "CZPXCJRZKQDRVYXFAZYUIAWNACDAAHEVAEXAKN@example.com");
    EXPECT_EQ(d.msgid, "<CZPXCJRZKQDRVYXFAZYUIAWNACDAAHEVAEXAKN@example.com>");
    EXPECT_EQ(d.ricevuta, ReceiptKind::completa);
    EXPECT_EQ(d.consegna, "example.example.com");
    ASSERT_TRUE(m.original);
    EXPECT_EQ(m.original->subject, "Subject");
    EXPECT_EQ(m.original->message_id, "<CZPXCJRZKQDRVYXFAZYUIAWNACDAAHEVAEXAKN@example.com>");
    EXPECT_EQ(m.original->parts.size(), 4u);
    EXPECT_TRUE(m.problems.empty()) << problems_of(m);
}

TEST(ReaderReal, AnonBustaSha256WithCrlfAndTruncatedOriginal) {
    PecMessageInfo m = read_fixture("anon-busta-sha256.eml");
    EXPECT_EQ(m.type, MessageType::busta_trasporto);
    EXPECT_EQ(m.headers.x_tipo_ricevuta, "completa");  // sent as "X-Tiporicevuta"
    EXPECT_EQ(m.micalg, "sha-256");
    EXPECT_EQ(m.from_name, "Per conto di: no-reply@example.com");
    ASSERT_TRUE(m.daticert) << m.daticert_error.value_or("");
    const Daticert& d = *m.daticert;
    EXPECT_EQ(d.tipo, DaticertType::posta_certificata);
    EXPECT_EQ(d.mittente, "no-reply@example.com");
    EXPECT_EQ(d.oggetto, "POSTA CERTIFICATA: SUBJECT");
    EXPECT_EQ(d.gestore_emittente, "no-reply@example.com");
    EXPECT_EQ(d.giorno, "14/05/2021");
    EXPECT_EQ(d.ora, "12:02:08");
    EXPECT_EQ(d.identificativo, "CZPXCJRZKQDRVYXFAZYUIAWNACDAAHEVAEXAKN@example.com");
    EXPECT_EQ(d.ricevuta, ReceiptKind::completa);
    ASSERT_TRUE(m.original);
    EXPECT_EQ(m.original->subject, "POSTA CERTIFICATA: SUBJECT");
    EXPECT_EQ(m.original->message_id, "<CZPXCJRZKQDRVYXFAZYUIAWNACDAAHEVAEXAKN@example.com>");
    EXPECT_EQ(m.original->riferimento_message_id, "<CZPXCJRZKQDRVAAHEVAEXAKN@example.com>");
    // The anonymiser edited the three copies of the client msgid differently: reported.
    EXPECT_EQ(m.problems.size(), 2u) << problems_of(m);
    EXPECT_TRUE(has_problem(m, "postacert.eml X-Riferimento-Message-ID")) << problems_of(m);
    EXPECT_TRUE(has_problem(m, "differs from daticert msgid")) << problems_of(m);
}

// ------------------------------------------------------------------------------------------------
// Synthetic messages for the types no public sample exists for

namespace {

std::string base64(std::string_view s) {
    gchar* b = g_base64_encode(reinterpret_cast<const guchar*>(s.data()), s.size());
    std::string out(b);
    g_free(b);
    return out;
}

struct Synthetic {
    std::string headers;                  // extra header lines, each ending in \n
    std::optional<Daticert> daticert;     // written with write_daticert
    std::optional<std::string> original;  // message/rfc822 body
    std::string original_name = "postacert.eml";
    bool sign = true;

    std::string build() const {
        std::string inner =
            "Content-Type: multipart/mixed; boundary=\"MIX\"\n\n"
            "--MIX\nContent-Type: text/plain; charset=utf-8\n\ntesto\n";
        if (daticert)
            inner +=
                "--MIX\nContent-Type: application/xml; name=\"daticert.xml\"\n"
                "Content-Disposition: inline; filename=\"daticert.xml\"\n"
                "Content-Transfer-Encoding: base64\n\n" +
                base64(write_daticert(*daticert)) + "\n";
        if (original)
            inner += "--MIX\nContent-Type: message/rfc822; name=\"" + original_name +
                     "\"\nContent-Disposition: inline; filename=\"" + original_name + "\"\n\n" +
                     *original + "\n";
        inner += "--MIX--\n";
        std::string msg =
            "From: posta-certificata@pec.example.it\nTo: mario@pec.example.it\n"
            "Subject: synthetic\nDate: Mon, 01 Jul 2024 12:00:00 +0200\n"
            "Message-ID: <rcpt.1@pec.example.it>\n" +
            headers + "MIME-Version: 1.0\n";
        if (!sign) return msg + inner;
        return msg +
               "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; "
               "micalg=\"sha-256\"; boundary=\"SIG\"\n\n--SIG\n" +
               inner +
               "--SIG\nContent-Type: application/pkcs7-signature; name=\"smime.p7s\"\n"
               "Content-Transfer-Encoding: base64\n"
               "Content-Disposition: attachment; filename=\"smime.p7s\"\n\nAAEC\n--SIG--\n";
    }
};

Daticert synthetic_daticert(DaticertType tipo, DaticertError errore) {
    Daticert d;
    d.tipo = tipo;
    d.errore = errore;
    d.mittente = "mario@pec.example.it";
    d.destinatari = {{"anna@pec.other.it", RecipientKind::certificato}};
    d.risposte = "mario@pec.example.it";
    d.oggetto = "Contratto";
    d.gestore_emittente = "Example PEC";
    d.giorno = "01/07/2024";
    d.ora = "12:00:00";
    d.zona = "+0200";
    d.identificativo = "busta.1@pec.example.it";
    d.msgid = "<client.1@mua.example.it>";
    return d;
}

PecMessageInfo read_ok(const std::string& raw) {
    auto info = read_pec_message(raw);
    EXPECT_TRUE(info.has_value()) << (info ? "" : info.error().message);
    return info ? *info : PecMessageInfo{};
}

const char* kOriginal =
    "From: mario@pec.example.it\nTo: anna@pec.other.it\nSubject: Contratto\n"
    "Message-ID: <busta.1@pec.example.it>\nX-Riferimento-Message-ID: <client.1@mua.example.it>\n"
    "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"ORIG\"\n\n"
    "--ORIG\nContent-Type: text/plain\n\nciao\n"
    "--ORIG\nContent-Type: text/plain; name=\"contratto.pdf.hash\"\n"
    "Content-Disposition: attachment; filename=\"contratto.pdf.hash\"\n\n"
    "da39a3ee5e6b4b0d3255bfef95601890afd80709\n"
    "--ORIG--\n";

}  // namespace

TEST(ReaderSynthetic, EveryNoticeTypeIsClassifiedAndCrossChecked) {
    struct Case {
        const char* headers;
        DaticertType tipo;
        DaticertError errore;
        MessageType expected;
    };
    const Case cases[] = {
        {"X-Ricevuta: non-accettazione\n", DaticertType::non_accettazione, DaticertError::altro,
         MessageType::non_accettazione},
        {"X-Ricevuta: non-accettazione\nX-VerificaSicurezza: errore\n",
         DaticertType::non_accettazione, DaticertError::virus, MessageType::non_accettazione_virus},
        {"X-Ricevuta: presa-in-carico\n", DaticertType::presa_in_carico, DaticertError::nessuno,
         MessageType::presa_in_carico},
        {"X-Ricevuta: errore-consegna\n", DaticertType::errore_consegna, DaticertError::no_dominio,
         MessageType::errore_consegna},
        {"X-Ricevuta: errore-consegna\nX-VerificaSicurezza: errore\n",
         DaticertType::errore_consegna, DaticertError::virus, MessageType::errore_consegna_virus},
        {"X-Ricevuta: preavviso-errore-consegna\n", DaticertType::preavviso_errore_consegna,
         DaticertError::altro, MessageType::preavviso_errore_consegna},
        {"X-Ricevuta: rilevazione-virus\nX-Mittente: mario@pec.example.it\n",
         DaticertType::rilevazione_virus, DaticertError::virus, MessageType::rilevazione_virus},
        {"x-ricevuta: ACCETTAZIONE\n", DaticertType::accettazione, DaticertError::nessuno,
         MessageType::accettazione},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.headers);
        Synthetic s;
        s.headers =
            std::string(c.headers) + "X-Riferimento-Message-ID: <client.1@mua.example.it>\n";
        s.daticert = synthetic_daticert(c.tipo, c.errore);
        if (c.tipo == DaticertType::presa_in_carico) s.daticert->ricezione = {"anna@pec.other.it"};
        if (c.tipo == DaticertType::errore_consegna ||
            c.tipo == DaticertType::preavviso_errore_consegna ||
            c.tipo == DaticertType::rilevazione_virus) {
            s.daticert->consegna = "anna@pec.other.it";
            s.daticert->errore_esteso = "5.1.2 - Example PEC - dominio non valido";
        }
        PecMessageInfo m = read_ok(s.build());
        EXPECT_EQ(m.type, c.expected);
        ASSERT_TRUE(m.daticert) << m.daticert_error.value_or("");
        EXPECT_EQ(*m.daticert, *s.daticert);
        EXPECT_TRUE(m.has_signature_part);
        EXPECT_EQ(m.micalg, "sha-256");
        EXPECT_TRUE(m.problems.empty()) << problems_of(m);
        if (c.expected == MessageType::rilevazione_virus) {
            EXPECT_EQ(m.headers.x_mittente, "mario@pec.example.it");
        }
    }
}

TEST(ReaderSynthetic, BustaDiAnomaliaWrapsTheReceivedMessage) {
    Synthetic s;
    s.headers = "X-Trasporto: errore\n";
    s.original =
        "From: x@ordinary.example.com\nTo: mario@pec.example.it\nSubject: ciao\n"
        "Message-ID: <plain.7@ordinary.example.com>\n\nbody\n";
    s.original_name = "anomalia.eml";
    PecMessageInfo m = read_ok(s.build());
    EXPECT_EQ(m.type, MessageType::busta_anomalia);
    EXPECT_FALSE(m.has_daticert);
    ASSERT_TRUE(m.original);
    EXPECT_EQ(m.original->filename, "anomalia.eml");
    EXPECT_EQ(m.original->subject, "ciao");
    EXPECT_EQ(m.original->message_id, "<plain.7@ordinary.example.com>");
    EXPECT_TRUE(m.problems.empty()) << problems_of(m);

    s.daticert = synthetic_daticert(DaticertType::posta_certificata, DaticertError::nessuno);
    m = read_ok(s.build());
    EXPECT_EQ(m.type, MessageType::busta_anomalia);
    EXPECT_TRUE(has_problem(m, "must not carry daticert.xml")) << problems_of(m);
}

TEST(ReaderSynthetic, OrdinaryMail) {
    std::string raw =
        "From: \"Anna\" <anna@example.com>\nTo: a@x.it, Group: b@y.it, c@z.it;\nCc: d@w.it\n"
        "Subject: =?UTF-8?Q?perch=C3=A8?=\nMIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\nhi\n"
        "--B\nContent-Type: application/pdf; name=\"a.pdf\"\nContent-Transfer-Encoding: base64\n\n"
        "JVBERi0=\n--B--\n";
    PecMessageInfo m = read_ok(raw);
    EXPECT_EQ(m.type, MessageType::ordinary);
    EXPECT_FALSE(m.is_signed);
    EXPECT_EQ(m.headers.subject, "perch\xC3\xA8");
    EXPECT_EQ(m.from_name, "Anna");
    EXPECT_EQ(m.to_addresses, (std::vector<std::string>{"a@x.it", "b@y.it", "c@z.it"}));
    EXPECT_EQ(m.cc_addresses, std::vector<std::string>{"d@w.it"});
    ASSERT_EQ(m.parts.size(), 2u);
    EXPECT_EQ(m.parts[1].content_type, "application/pdf");
    EXPECT_EQ(m.parts[1].filename, "a.pdf");
    EXPECT_EQ(m.parts[1].size, 5u);  // "%PDF-" decoded
    EXPECT_TRUE(m.problems.empty()) << problems_of(m);
}

TEST(ReaderSynthetic, HeaderAndDaticertDisagree) {
    Synthetic s;
    s.headers = "X-Ricevuta: accettazione\nX-Riferimento-Message-ID: <other@mua.example.it>\n";
    s.daticert = synthetic_daticert(DaticertType::avvenuta_consegna, DaticertError::nessuno);
    s.daticert->ricevuta = ReceiptKind::sintetica;
    s.daticert->consegna = "anna@pec.other.it";
    PecMessageInfo m = read_ok(s.build());
    EXPECT_EQ(m.type, MessageType::accettazione);  // headers win, the mismatch is reported
    EXPECT_TRUE(has_problem(m, "daticert tipo \"avvenuta-consegna\" does not match"))
        << problems_of(m);
    EXPECT_TRUE(has_problem(m, "differs from daticert msgid")) << problems_of(m);

    // Virus header with a non-virus daticert.
    s.headers =
        "X-Ricevuta: errore-consegna\nX-VerificaSicurezza: errore\n"
        "X-Riferimento-Message-ID: <client.1@mua.example.it>\n";
    s.daticert = synthetic_daticert(DaticertType::errore_consegna, DaticertError::no_dest);
    s.daticert->consegna = "anna@pec.other.it";
    m = read_ok(s.build());
    EXPECT_EQ(m.type, MessageType::errore_consegna_virus);
    EXPECT_TRUE(has_problem(m, "daticert errore \"no-dest\" does not match")) << problems_of(m);
}

TEST(ReaderSynthetic, MissingDaticertAndUnsignedReceipt) {
    Synthetic s;
    s.headers = "X-Ricevuta: avvenuta-consegna\n";
    s.sign = false;
    PecMessageInfo m = read_ok(s.build());
    EXPECT_EQ(m.type, MessageType::avvenuta_consegna);
    EXPECT_FALSE(m.has_daticert);
    EXPECT_TRUE(has_problem(m, "daticert.xml is missing")) << problems_of(m);
    EXPECT_TRUE(has_problem(m, "must be S/MIME multipart/signed")) << problems_of(m);
}

TEST(ReaderSynthetic, UnknownHeaderValuesAreReported) {
    Synthetic s;
    s.headers = "X-Ricevuta: consegnata\nX-TipoRicevuta: lunga\n";
    PecMessageInfo m = read_ok(s.build());
    EXPECT_EQ(m.type, MessageType::ordinary);
    EXPECT_TRUE(has_problem(m, "unknown X-Ricevuta value \"consegnata\"")) << problems_of(m);
    EXPECT_TRUE(has_problem(m, "unknown X-TipoRicevuta value \"lunga\"")) << problems_of(m);
}

TEST(ReaderSynthetic, BreveReceiptHashParts) {
    Synthetic s;
    s.headers =
        "X-Ricevuta: avvenuta-consegna\nX-Riferimento-Message-ID: <client.1@mua.example.it>\n";
    s.daticert = synthetic_daticert(DaticertType::avvenuta_consegna, DaticertError::nessuno);
    s.daticert->ricevuta = ReceiptKind::breve;
    s.daticert->consegna = "anna@pec.other.it";
    s.original = kOriginal;
    PecMessageInfo m = read_ok(s.build());
    EXPECT_EQ(m.type, MessageType::avvenuta_consegna);
    ASSERT_TRUE(m.original);
    EXPECT_EQ(m.original->hash_parts, 1u);
    EXPECT_EQ(m.original->message_id, "<busta.1@pec.example.it>");
    EXPECT_TRUE(m.problems.empty()) << problems_of(m);

    // An attachment left in place and a hash that is not a SHA-1.
    std::string bad = kOriginal;
    bad.replace(bad.find("da39a3ee"), 8, "zz39a3ee");
    bad.replace(bad.find("--ORIG--"), 8,
                "--ORIG\nContent-Type: application/pdf; name=\"b.pdf\"\n\nPDF\n--ORIG--");
    s.original = bad;
    m = read_ok(s.build());
    EXPECT_TRUE(has_problem(m, "hash part contratto.pdf.hash does not hold")) << problems_of(m);
    EXPECT_TRUE(has_problem(m, "breve receipt carries attachment b.pdf")) << problems_of(m);
}

TEST(ReaderSynthetic, SinteticaReceiptMustNotCarryTheOriginal) {
    Synthetic s;
    s.headers =
        "X-Ricevuta: avvenuta-consegna\nX-Riferimento-Message-ID: <client.1@mua.example.it>\n";
    s.daticert = synthetic_daticert(DaticertType::avvenuta_consegna, DaticertError::nessuno);
    s.daticert->ricevuta = ReceiptKind::sintetica;
    s.daticert->consegna = "anna@pec.other.it";
    PecMessageInfo m = read_ok(s.build());
    EXPECT_TRUE(m.problems.empty()) << problems_of(m);
    s.original = kOriginal;
    m = read_ok(s.build());
    EXPECT_TRUE(has_problem(m, "avvenuta-consegna must not carry the original")) << problems_of(m);
}

TEST(ReaderSynthetic, ForwardedDaticertInsideTheOriginalIsNotThisMessagesOwn) {
    // A busta whose original is itself a PEC receipt: its daticert.xml belongs to the original.
    std::string forwarded =
        "From: a@pec.example.it\nSubject: fwd\nMessage-ID: <busta.1@pec.example.it>\n"
        "X-Riferimento-Message-ID: <client.1@mua.example.it>\nMIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=F\n\n--F\n"
        "Content-Type: application/xml; name=\"daticert.xml\"\n\n<postacert/>\n--F--\n";
    Synthetic s;
    s.headers =
        "X-Trasporto: posta-certificata\nX-Riferimento-Message-ID: <client.1@mua.example.it>\n";
    s.original = forwarded;
    PecMessageInfo m = read_ok(s.build());
    EXPECT_EQ(m.type, MessageType::busta_trasporto);
    EXPECT_FALSE(m.has_daticert);
    EXPECT_TRUE(has_problem(m, "daticert.xml is missing")) << problems_of(m);
}

TEST(ReaderSynthetic, RejectsNonMessages) {
    auto r = read_pec_message("");
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().kind, ErrorKind::corrupt);
    r = read_pec_message(" \n\n");
    EXPECT_FALSE(r.has_value());
}

// ------------------------------------------------------------------------------------------------
// JSON

namespace {

// Runs jq on `json` and returns its raw output; jq rejects anything that is not valid JSON.
std::string jq(const std::string& json, const std::string& filter, int* status) {
    std::string path = std::string(PECD_BINARY_DIR) + "/reader_test_XXXXXX";
    int fd = mkstemp(path.data());
    EXPECT_GE(fd, 0);
    if (fd < 0) return {};
    ::close(fd);
    std::ofstream(path, std::ios::binary) << json;
    std::string cmd = "jq -e -r '" + filter + "' '" + path + "' 2>&1";
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    if (p != nullptr) {
        char buf[512];
        while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
        int rc = pclose(p);
        *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    }
    std::remove(path.c_str());
    return out;
}

}  // namespace

TEST(ReaderJson, FixtureRendersAsValidJson) {
    PecMessageInfo m = read_fixture("aruba-avvenuta-consegna-2018.eml");
    std::string json = to_json(m);
    int status = -1;
    EXPECT_EQ(jq(json, ".type", &status), "avvenuta-consegna\n");
    EXPECT_EQ(status, 0);
    EXPECT_EQ(jq(json, ".daticert.msgid", &status),
              "<1542123565.921546936035156.464602125997431-openerp-8-fatturapa.attachment.out@"
              "elbati-Vostro-3550>\n");
    EXPECT_EQ(jq(json, ".daticert.destinatari[0].tipo", &status), "certificato\n");
    EXPECT_EQ(jq(json, ".original.subject", &status), "IT03339130126_00009.xml\n");
    EXPECT_EQ(jq(json, ".parts | length", &status), "5\n");
    EXPECT_EQ(jq(json, ".headers.cc", &status), "null\n");
}

TEST(ReaderJson, EscapesHostileStrings) {
    PecMessageInfo m;
    m.headers.subject = std::string("a \"quoted\" back\\slash\nnew\ttab\x01 ctl \xC3\xA8");
    m.problems = {"x\ry"};
    std::string json = to_json(m);
    int status = -1;
    EXPECT_EQ(jq(json, ".headers.subject", &status),
              std::string("a \"quoted\" back\\slash\nnew\ttab\x01 ctl \xC3\xA8\n"));
    EXPECT_EQ(status, 0);
    EXPECT_NE(json.find("\\u0001"), std::string::npos);
    EXPECT_EQ(jq(json, ".problems[0]", &status), "x\ry\n");
    m.headers.subject = std::string("bad \xFF\xC3 utf8");
    EXPECT_EQ(jq(to_json(m), ".headers.subject", &status), "bad \xEF\xBF\xBD\xEF\xBF\xBD utf8\n");
    EXPECT_EQ(status, 0);
}
