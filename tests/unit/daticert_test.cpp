#include "stages/pec/daticert.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

using namespace pecd;
using namespace pecd::pec;

namespace {

const std::string kDtd = std::string(PECD_SHARED_DIR) + "/fixtures/real/daticert.dtd";

// Writes `content` to a fresh temporary file and returns its path.
std::string temp_file(const std::string& content, const char* suffix) {
    std::string path = std::string(PECD_BINARY_DIR) + "/daticert_test_XXXXXX" + suffix;
    int fd = mkstemps(path.data(), static_cast<int>(std::char_traits<char>::length(suffix)));
    EXPECT_GE(fd, 0);
    if (fd < 0) return {};
    ::close(fd);
    std::ofstream(path, std::ios::binary) << content;
    return path;
}

struct Lint {
    int status = -1;
    std::string output;
};

// Validates with the real xmllint against the Italian DTD, never touching the network.
Lint xmllint_dtd(const std::string& xml) {
    std::string path = temp_file(xml, ".xml");
    std::string cmd = "xmllint --noout --nonet --dtdvalid '" + kDtd + "' '" + path + "' 2>&1";
    Lint lint;
    FILE* p = popen(cmd.c_str(), "r");
    if (p == nullptr) return lint;
    char buf[512];
    while (size_t n = fread(buf, 1, sizeof buf, p)) lint.output.append(buf, n);
    int rc = pclose(p);
    lint.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    std::remove(path.c_str());
    return lint;
}

Daticert base(DaticertType tipo, DaticertError errore = DaticertError::nessuno) {
    Daticert d;
    d.tipo = tipo;
    d.errore = errore;
    d.mittente = "mario.rossi@pec.example.it";
    d.destinatari = {{"anna.bianchi@pec.other.it", RecipientKind::certificato},
                     {"luca@gmail.example.com", RecipientKind::esterno}};
    d.risposte = "mario.rossi@pec.example.it";
    d.oggetto = "Fattura n. 12 & allegati <urgente> \"bozza\" - perch\xC3\xA8";
    d.gestore_emittente = "Example PEC S.p.A.";
    d.giorno = "05/12/2024";
    d.ora = "00:02:10";
    d.zona = "+0100";
    d.identificativo = "opec21192.20241205000210.24820.46.1.184@pec.example.it";
    d.msgid = "<2839ed57-e664-4020-bb69-6a8cb92d05a6@email.android.com>";
    return d;
}

// Every tipo with each meaningful errore/ricevuta combination (pec-rules.md §4.2, DECISIONS
// #5, #7, #8, #9).
std::vector<std::pair<std::string, Daticert>> variants() {
    std::vector<std::pair<std::string, Daticert>> out;
    for (ReceiptKind k : {ReceiptKind::completa, ReceiptKind::breve, ReceiptKind::sintetica}) {
        Daticert busta = base(DaticertType::posta_certificata);
        busta.ricevuta = k;
        out.emplace_back("busta-" + std::string(to_string(k)), busta);

        Daticert consegna = base(DaticertType::avvenuta_consegna);
        consegna.ricevuta = k;
        consegna.consegna = "anna.bianchi@pec.other.it";
        out.emplace_back("avvenuta-consegna-" + std::string(to_string(k)), consegna);
    }
    Daticert busta_no_msgid = base(DaticertType::posta_certificata);
    busta_no_msgid.msgid.reset();
    busta_no_msgid.oggetto.reset();
    busta_no_msgid.ricevuta = ReceiptKind::completa;
    out.emplace_back("busta-without-msgid-and-subject", busta_no_msgid);

    out.emplace_back("accettazione", base(DaticertType::accettazione));

    Daticert nacc = base(DaticertType::non_accettazione, DaticertError::altro);
    nacc.errore_esteso = "Destinatario in Bcc non ammesso";
    out.emplace_back("non-accettazione-altro", nacc);
    Daticert nacc_virus = base(DaticertType::non_accettazione, DaticertError::virus);
    nacc_virus.errore_esteso = "Eicar-Test-Signature";
    out.emplace_back("non-accettazione-virus", nacc_virus);

    Daticert presa = base(DaticertType::presa_in_carico);
    presa.ricezione = {"anna.bianchi@pec.other.it", "carla@pec.other.it"};
    out.emplace_back("presa-in-carico", presa);

    for (DaticertError e : {DaticertError::no_dest, DaticertError::no_dominio, DaticertError::virus,
                            DaticertError::altro}) {
        Daticert err = base(DaticertType::errore_consegna, e);
        err.consegna = "anna.bianchi@pec.other.it";
        err.errore_esteso = "5.1.1 - Example PEC S.p.A. - indirizzo non valido";
        out.emplace_back("errore-consegna-" + std::string(to_string(e)), err);
    }
    Daticert preavviso = base(DaticertType::preavviso_errore_consegna, DaticertError::altro);
    preavviso.consegna = "anna.bianchi@pec.other.it";
    preavviso.errore_esteso = "mancata consegna entro 12 ore";
    out.emplace_back("preavviso-errore-consegna", preavviso);

    Daticert virus = base(DaticertType::rilevazione_virus, DaticertError::virus);
    virus.consegna = "anna.bianchi@pec.other.it";
    virus.errore_esteso = "Win.Test.EICAR_HDB-1";
    out.emplace_back("rilevazione-virus", virus);
    return out;
}

const char* kMinimal = R"(<?xml version="1.0" encoding="UTF-8"?>
<postacert tipo="accettazione" errore="nessuno">
  <intestazione>
    <mittente>a@pec.example.it</mittente>
    <destinatari tipo="certificato">b@pec.example.it</destinatari>
    <risposte>a@pec.example.it</risposte>
  </intestazione>
  <dati>
    <gestore-emittente>G</gestore-emittente>
    <data zona="+0100"><giorno>13/11/2018</giorno><ora>16:39:26</ora></data>
    <identificativo>id1@pec.example.it</identificativo>
  </dati>
</postacert>
)";

// Replaces the first occurrence of `from` in kMinimal.
std::string minimal_with(const std::string& from, const std::string& to) {
    std::string s = kMinimal;
    size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) s.replace(at, from.size(), to);
    return s;
}

void expect_corrupt(const std::string& xml, const std::string& reason_part) {
    auto r = parse_daticert(xml);
    ASSERT_FALSE(r.has_value()) << "accepted: " << xml;
    EXPECT_EQ(r.error().kind, ErrorKind::corrupt);
    EXPECT_NE(r.error().message.find(reason_part), std::string::npos)
        << "message: " << r.error().message << "\nexpected to contain: " << reason_part;
}

}  // namespace

TEST(Daticert, EveryVariantRoundTripsAndValidatesAgainstTheDtd) {
    for (const auto& [name, d] : variants()) {
        SCOPED_TRACE(name);
        std::string xml = write_daticert(d);
        EXPECT_TRUE(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<postacert"));
        Lint lint = xmllint_dtd(xml);
        EXPECT_EQ(lint.status, 0) << lint.output << "\n" << xml;
        auto parsed = parse_daticert(xml);
        ASSERT_TRUE(parsed.has_value()) << parsed.error().message << "\n" << xml;
        EXPECT_EQ(*parsed, d) << xml;
    }
}

TEST(Daticert, WritesElementsInDtdOrderWithEscaping) {
    Daticert d = base(DaticertType::avvenuta_consegna);
    d.ricevuta = ReceiptKind::completa;
    d.consegna = "anna.bianchi@pec.other.it";
    std::string xml = write_daticert(d);
    EXPECT_NE(xml.find("<msgid>&lt;2839ed57-e664-4020-bb69-6a8cb92d05a6@email.android.com&gt;"
                       "</msgid>"),
              std::string::npos)
        << xml;
    EXPECT_NE(xml.find("<oggetto>Fattura n. 12 &amp; allegati &lt;urgente&gt;"), std::string::npos)
        << xml;
    EXPECT_NE(xml.find("<destinatari tipo=\"esterno\">luca@gmail.example.com</destinatari>"),
              std::string::npos);
    EXPECT_NE(xml.find("<data zona=\"+0100\">"), std::string::npos);
    std::vector<std::string> order = {"<mittente>",
                                      "<destinatari",
                                      "<risposte>",
                                      "<oggetto>",
                                      "<gestore-emittente>",
                                      "<data",
                                      "<giorno>",
                                      "<ora>",
                                      "<identificativo>",
                                      "<msgid>",
                                      "<ricevuta tipo=\"completa\"",
                                      "<consegna>"};
    size_t last = 0;
    for (const std::string& tag : order) {
        size_t at = xml.find(tag);
        ASSERT_NE(at, std::string::npos) << tag;
        EXPECT_GT(at, last) << tag << " out of order\n" << xml;
        last = at;
    }
}

TEST(Daticert, PresenceFollowsTipo) {
    // DECISIONS #7: no <ricevuta> in an accettazione even if a caller set it; <consegna> and
    // <ricezione> only where §4.2 allows them.
    Daticert d = base(DaticertType::accettazione);
    d.ricevuta = ReceiptKind::completa;
    d.consegna = "x@pec.example.it";
    d.ricezione = {"y@pec.example.it"};
    std::string xml = write_daticert(d);
    EXPECT_EQ(xml.find("<ricevuta"), std::string::npos) << xml;
    EXPECT_EQ(xml.find("<consegna"), std::string::npos) << xml;
    EXPECT_EQ(xml.find("<ricezione"), std::string::npos) << xml;
    EXPECT_EQ(xmllint_dtd(xml).status, 0);

    Daticert presa = base(DaticertType::presa_in_carico);
    presa.ricezione = {"y@pec.example.it"};
    presa.consegna = "x@pec.example.it";
    xml = write_daticert(presa);
    EXPECT_NE(xml.find("<ricezione>y@pec.example.it</ricezione>"), std::string::npos) << xml;
    EXPECT_EQ(xml.find("<consegna"), std::string::npos) << xml;
}

TEST(Daticert, HostileTextStillGivesValidXml) {
    Daticert d = base(DaticertType::accettazione);
    d.oggetto = std::string("ctl\x01\x1b bad\xFF\xC3 utf8 ]]> &amp; \t tab");
    std::string xml = write_daticert(d);
    Lint lint = xmllint_dtd(xml);
    EXPECT_EQ(lint.status, 0) << lint.output << xml;
    auto parsed = parse_daticert(xml);
    ASSERT_TRUE(parsed.has_value()) << parsed.error().message;
    EXPECT_EQ(*parsed->oggetto, "ctl bad\xEF\xBF\xBD\xEF\xBF\xBD utf8 ]]> &amp; \t tab");
}

TEST(Daticert, SetTimeUsesItalianLegalTime) {
    Daticert d;
    // 2024-07-01 10:00:00 UTC is 12:00:00 in Rome (summer time).
    d.set_time(PecTime{std::chrono::system_clock::from_time_t(1719828000)});
    EXPECT_EQ(d.giorno, "01/07/2024");
    EXPECT_EQ(d.ora, "12:00:00");
    EXPECT_EQ(d.zona, "+0200");
}

TEST(DaticertParse, CompactDocumentAndAttributeDefaults) {
    // No whitespace at all, no errore attribute, no destinatari tipo: DTD defaults apply.
    std::string xml =
        "<?xml version=\"1.0\"?><postacert tipo=\"avvenuta-consegna\"><intestazione>"
        "<mittente>a@x.it</mittente><destinatari>b@y.it</destinatari><risposte>a@x.it</risposte>"
        "</intestazione><dati><gestore-emittente>G</gestore-emittente><data zona=\"+0200\">"
        "<giorno>01/07/2024</giorno><ora>12:00:00</ora></data><identificativo>i@x.it"
        "</identificativo><ricevuta tipo=\"breve\"/><consegna>b@y.it</consegna></dati></postacert>";
    auto d = parse_daticert(xml);
    ASSERT_TRUE(d.has_value()) << d.error().message;
    EXPECT_EQ(d->tipo, DaticertType::avvenuta_consegna);
    EXPECT_EQ(d->errore, DaticertError::nessuno);
    ASSERT_EQ(d->destinatari.size(), 1u);
    EXPECT_EQ(d->destinatari[0].kind, RecipientKind::certificato);
    EXPECT_EQ(d->ricevuta, ReceiptKind::breve);
    EXPECT_EQ(d->consegna, "b@y.it");
    EXPECT_FALSE(d->msgid.has_value());
    EXPECT_FALSE(d->oggetto.has_value());
}

TEST(DaticertParse, ToleratesIndentationCommentsAndWrappedValues) {
    std::string xml =
        minimal_with("<mittente>a@pec.example.it</mittente>",
                     "<!-- sender -->\n<mittente>\n   a@pec.example.it\n  </mittente>");
    auto d = parse_daticert(xml);
    ASSERT_TRUE(d.has_value()) << d.error().message;
    EXPECT_EQ(d->mittente, "a@pec.example.it");
    EXPECT_EQ(d->giorno, "13/11/2018");
    EXPECT_EQ(d->ora, "16:39:26");
    EXPECT_EQ(d->identificativo, "id1@pec.example.it");
}

TEST(DaticertParse, AcceptsExternalOnlyDoctypeWithoutLoadingIt) {
    // Telecompost style: PUBLIC DOCTYPE with a remote URL and a stylesheet PI. NONET and no
    // DTDLOAD: it must parse and must not try the network.
    std::string telecompost = std::string(kMinimal).replace(
        std::string(kMinimal).find("<postacert"), 0,
        "<?xml-stylesheet type=\"text/xsl\" href=\"postacert.xsl\"?>\n"
        "<!DOCTYPE postacert PUBLIC \"posta certificata\" "
        "\"https://www.telecompost.it/dtd/postacert.dtd\">\n");
    auto d = parse_daticert(telecompost);
    ASSERT_TRUE(d.has_value()) << d.error().message;
    EXPECT_EQ(d->tipo, DaticertType::accettazione);

    // A reachable local DTD whose defaults differ: had it been read, errore would be "altro"
    // and the recipient "esterno".
    std::string dtd = temp_file(
        "<!ELEMENT postacert ANY>\n"
        "<!ATTLIST postacert errore CDATA \"altro\">\n"
        "<!ATTLIST destinatari tipo CDATA \"esterno\">\n",
        ".dtd");
    std::string xml = minimal_with(
        "<postacert tipo=\"accettazione\" errore=\"nessuno\">",
        "<!DOCTYPE postacert SYSTEM \"file://" + dtd + "\">\n<postacert tipo=\"accettazione\">");
    xml = xml.replace(xml.find(" tipo=\"certificato\""), 19, "");
    d = parse_daticert(xml);
    std::remove(dtd.c_str());
    ASSERT_TRUE(d.has_value()) << d.error().message;
    EXPECT_EQ(d->errore, DaticertError::nessuno);
    EXPECT_EQ(d->destinatari.at(0).kind, RecipientKind::certificato);
}

TEST(DaticertParse, RefusesInternalSubsets) {
    const std::string body = std::string(kMinimal).substr(std::string(kMinimal).find("<postacert"));
    std::string laughs =
        "<?xml version=\"1.0\"?>\n<!DOCTYPE postacert [\n"
        " <!ENTITY lol \"lol\">\n"
        " <!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\n"
        " <!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\">\n"
        " <!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">\n"
        " <!ENTITY lol4 \"&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;\">\n"
        " <!ENTITY lol5 \"&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;\">\n"
        " <!ENTITY lol6 \"&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;\">\n"
        " <!ENTITY lol7 \"&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;\">\n"
        " <!ENTITY lol8 \"&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;\">\n"
        " <!ENTITY lol9 \"&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;\">\n"
        "]>\n" +
        body;
    size_t at = laughs.find("<risposte>a@pec.example.it");
    laughs.replace(at, std::string("<risposte>a@pec.example.it").size(), "<risposte>&lol9;");
    expect_corrupt(laughs, "internal subset");

    std::string xxe =
        "<?xml version=\"1.0\"?>\n<!DOCTYPE postacert [ <!ENTITY xxe SYSTEM "
        "\"file:///etc/passwd\"> ]>\n" +
        body;
    xxe.replace(xxe.find("<mittente>a@pec.example.it"), 26, "<mittente>&xxe;");
    expect_corrupt(xxe, "internal subset");

    // External id plus an (even empty) internal subset, and a parameter-entity variant.
    expect_corrupt(
        "<!DOCTYPE postacert PUBLIC \"p\" \"https://example.invalid/x.dtd\" []>\n" + body,
        "internal subset");
    expect_corrupt(
        "<!DOCTYPE postacert [ <!ENTITY % p SYSTEM \"http://127.0.0.1:9/x\"> %p; ]>\n" + body,
        "internal subset");
}

TEST(DaticertParse, RefusesUndeclaredEntityReferences) {
    // With only an external DOCTYPE, &foo; is not a well-formedness error for libxml2; it must
    // still never be resolved or silently dropped.
    std::string xml = minimal_with("<postacert tipo",
                                   "<!DOCTYPE postacert SYSTEM \"https://example.invalid/d.dtd\">\n"
                                   "<postacert tipo");
    xml.replace(xml.find("<mittente>a@pec.example.it"), 26, "<mittente>&foo;");
    auto r = parse_daticert(xml);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().kind, ErrorKind::corrupt);
}

TEST(DaticertParse, PreciseErrors) {
    expect_corrupt(minimal_with("tipo=\"accettazione\"", "tipo=\"consegnata\""),
                   "unknown postacert tipo \"consegnata\"");
    expect_corrupt(minimal_with("tipo=\"accettazione\" ", ""), "missing tipo attribute");
    expect_corrupt(minimal_with("errore=\"nessuno\"", "errore=\"grave\""),
                   "unknown postacert errore");
    expect_corrupt(minimal_with("<mittente>a@pec.example.it</mittente>", ""),
                   "missing <mittente> in <intestazione>, found <destinatari>");
    expect_corrupt(
        minimal_with("<destinatari tipo=\"certificato\">b@pec.example.it</destinatari>", ""),
        "missing <destinatari> in <intestazione>");
    expect_corrupt(minimal_with("<risposte>a@pec.example.it</risposte>", ""), "missing <risposte>");
    expect_corrupt(minimal_with("tipo=\"certificato\"", "tipo=\"pec\""),
                   "unknown destinatari tipo");
    expect_corrupt(minimal_with("<identificativo>id1@pec.example.it</identificativo>", ""),
                   "missing <identificativo> in <dati>");
    expect_corrupt(minimal_with("<identificativo>id1@pec.example.it</identificativo>",
                                "<identificativo> </identificativo>"),
                   "empty <identificativo>");
    expect_corrupt(minimal_with("<gestore-emittente>G</gestore-emittente>", ""),
                   "missing <gestore-emittente>");
    expect_corrupt(minimal_with(" zona=\"+0100\"", ""), "missing zona");
    expect_corrupt(minimal_with("+0100", "+01:00"), "zona");
    expect_corrupt(minimal_with("13/11/2018", "2018-11-13"), "giorno");
    expect_corrupt(minimal_with("16:39:26", "16.39"), "ora");
    expect_corrupt(minimal_with("</identificativo>", "</identificativo><firma>x</firma>"),
                   "unexpected <firma> in <dati>");
    expect_corrupt(minimal_with("</identificativo>", "</identificativo><ricevuta tipo=\"lunga\"/>"),
                   "unknown ricevuta tipo");
    expect_corrupt(minimal_with("</identificativo>", "</identificativo><ricevuta/>"),
                   "missing tipo attribute on <ricevuta>");
    // Wrong order: msgid after ricevuta.
    expect_corrupt(
        minimal_with("</identificativo>",
                     "</identificativo><ricevuta tipo=\"breve\"/><msgid>&lt;x&gt;</msgid>"),
        "unexpected <msgid> in <dati>");
    // The anon-errore-consegna.eml defect: a stray character after </risposte>.
    expect_corrupt(minimal_with("</risposte>", "</risposte>a"),
                   "unexpected text \"a\" in <intestazione>");
    expect_corrupt(minimal_with("<mittente>a@pec.example.it</mittente>",
                                "<mittente><b>a@pec.example.it</b></mittente>"),
                   "unexpected <b> inside <mittente>");
    expect_corrupt(minimal_with("</dati>", "</dati><dati/>"), "unexpected <dati> in <postacert>");
    expect_corrupt("<?xml version=\"1.0\"?><postacerts tipo=\"accettazione\"/>", "root element");
    expect_corrupt(minimal_with("</postacert>", ""), "malformed XML");
    expect_corrupt("", "malformed XML");
    expect_corrupt(minimal_with("<identificativo>", "<identificativo>" + std::string(2 << 20, 'x')),
                   "larger than 1 MiB");
}
