// Builders of the eleven PEC messages: every message is parsed back with GMime, its daticert.xml
// is validated with xmllint against the real DTD and read with libxml2, and its signature is
// checked with `openssl cms -verify` against a throwaway CA made with the openssl CLI.
#include "stages/pec/builders.hpp"

#include <gmime/gmime.h>
#include <gtest/gtest.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "stages/pec/postacert.hpp"

using namespace pecd;
using namespace pecd::pec;
namespace fs = std::filesystem;

namespace {

const std::string kDomain = "pec.provatest.it";
const std::string kGestore = "PROVA PEC S.p.A.";
const std::string kId = "20261122103000.node1.abc.1.0123456789ab@pec.provatest.it";
const std::string kClientId = "<client-123@mail.mittente.example>";

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

void write_file(const fs::path& p, std::string_view bytes) {
    std::ofstream out(p, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

int run(const std::string& command) {
    return std::system((command + " >/dev/null 2>&1").c_str());
}

std::string sha1_evp(std::string_view bytes) {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EXPECT_EQ(EVP_Digest(bytes.data(), bytes.size(), d, &n, EVP_sha1(), nullptr), 1);
    std::string hex;
    char buf[3];
    for (unsigned int i = 0; i < n; ++i) {
        std::snprintf(buf, sizeof buf, "%02x", d[i]);
        hex += buf;
    }
    return hex;
}

std::string lf(std::string s) {  // test inputs are written with CRLF; some tests feed LF
    std::string out;
    for (size_t i = 0; i < s.size(); ++i)
        if (!(s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n')) out += s[i];
    return out;
}

bool crlf_only(std::string_view s) {
    for (size_t i = 0; i < s.size(); ++i)
        if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')) return false;
    return true;
}

// ---------------------------------------------------------------------------------------------
// Throwaway PKI and a test EntitySigner on the OpenSSL CMS API.

struct Pki {
    fs::path dir;
    EVP_PKEY* key = nullptr;
    X509* cert = nullptr;
};

Pki& pki() {
    static Pki p = [] {
        Pki x;
        x.dir = fs::temp_directory_path() / ("pecd-builders-" + std::to_string(getpid()));
        fs::create_directories(x.dir);
        std::string d = x.dir.string();
        write_file(x.dir / "leaf.ext",
                   "keyUsage=critical,digitalSignature\n"
                   "subjectKeyIdentifier=hash\n"
                   "authorityKeyIdentifier=keyid\n"
                   "subjectAltName=email:posta-certificata@" +
                       kDomain + "\n");
        std::string cmds =
            "cd " + d +
            " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2"
            " -subj '/C=IT/O=Prova CA/CN=Prova Test CA'"
            " && openssl req -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr"
            " -subj '/C=IT/O=PROVA PEC S.p.A./CN=Posta Certificata PROVA'"
            " && openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
            " -out leaf.pem -days 2 -extfile leaf.ext";
        if (run(cmds) != 0) ADD_FAILURE() << "openssl CLI could not make the test PKI";
        BIO* kb = BIO_new_file((x.dir / "leaf.key").c_str(), "r");
        BIO* cb = BIO_new_file((x.dir / "leaf.pem").c_str(), "r");
        if (kb) x.key = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
        if (cb) x.cert = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
        BIO_free(kb);
        BIO_free(cb);
        return x;
    }();
    return p;
}

// Detached CMS over the exact entity bytes, wrapped as DECISIONS #3 says (pkcs7-signature,
// sha-256), everything CRLF.
Result<std::string> test_signer(std::string_view entity) {
    Pki& p = pki();
    if (!p.key || !p.cert) return fail(ErrorKind::config, "no test key");
    BIO* in = BIO_new_mem_buf(entity.data(), static_cast<int>(entity.size()));
    CMS_ContentInfo* cms = CMS_sign(p.cert, p.key, nullptr, in, CMS_DETACHED | CMS_BINARY);
    BIO_free(in);
    if (!cms) return fail(ErrorKind::transient, "CMS_sign failed");
    unsigned char* der = nullptr;
    int len = i2d_CMS_ContentInfo(cms, &der);
    CMS_ContentInfo_free(cms);
    if (len <= 0) return fail(ErrorKind::transient, "i2d failed");
    std::string b64(static_cast<size_t>(4 * ((len + 2) / 3)), '\0');
    EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()), der, len);
    OPENSSL_free(der);
    std::string wrapped;
    for (size_t i = 0; i < b64.size(); i += 76) wrapped += b64.substr(i, 76) + "\r\n";
    const std::string b = "----TESTSIGNATUREBOUNDARY";
    return "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; "
           "micalg=\"sha-256\"; boundary=\"" +
           b + "\"\r\n\r\nThis is an S/MIME signed message\r\n\r\n--" + b + "\r\n" +
           std::string(entity) + "\r\n--" + b +
           "\r\nContent-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\n"
           "Content-Transfer-Encoding: base64\r\n"
           "Content-Disposition: attachment; filename=\"smime.p7s\"\r\n\r\n" +
           wrapped + "\r\n--" + b + "--\r\n";
}

bool cms_verifies(std::string_view message, const std::string& name) {
    fs::path f = pki().dir / (name + ".eml");
    write_file(f, message);
    return run("openssl cms -verify -in " + f.string() + " -CAfile " +
               (pki().dir / "ca.pem").string() + " -out /dev/null") == 0;
}

// ---------------------------------------------------------------------------------------------
// Reading the output back.

struct GObjectDeleter {
    void operator()(void* p) const {
        if (p) g_object_unref(p);
    }
};

struct Parsed {
    std::unique_ptr<GMimeMessage, GObjectDeleter> message;
    GMimeObject* mixed = nullptr;  // first part of the multipart/signed
    std::vector<GMimeObject*> parts;

    std::string header(const char* name) const {
        const char* v = g_mime_object_get_header(GMIME_OBJECT(message.get()), name);
        return v ? v : "";
    }
    bool has_header(const char* name) const {
        return g_mime_object_get_header(GMIME_OBJECT(message.get()), name) != nullptr;
    }
    int count_header(const char* name) const {
        GMimeHeaderList* list = g_mime_object_get_header_list(GMIME_OBJECT(message.get()));
        int n = 0;
        for (int i = 0; i < g_mime_header_list_get_count(list); ++i)
            if (g_ascii_strcasecmp(
                    g_mime_header_get_name(g_mime_header_list_get_header_at(list, i)), name) == 0)
                ++n;
        return n;
    }
    std::string subject() const {
        const char* s = g_mime_message_get_subject(message.get());
        return s ? s : "";
    }
};

Parsed parse(std::string_view bytes) {
    g_mime_init();
    Parsed p;
    GMimeStream* stream = g_mime_stream_mem_new_with_buffer(bytes.data(), bytes.size());
    GMimeParser* parser = g_mime_parser_new_with_stream(stream);
    p.message.reset(g_mime_parser_construct_message(parser, nullptr));
    g_object_unref(parser);
    g_object_unref(stream);
    if (!p.message) return p;
    GMimeObject* root = g_mime_message_get_mime_part(p.message.get());
    if (root && GMIME_IS_MULTIPART_SIGNED(root))
        p.mixed = g_mime_multipart_get_part(GMIME_MULTIPART(root), 0);
    if (p.mixed && GMIME_IS_MULTIPART(p.mixed))
        for (int i = 0; i < g_mime_multipart_get_count(GMIME_MULTIPART(p.mixed)); ++i)
            p.parts.push_back(g_mime_multipart_get_part(GMIME_MULTIPART(p.mixed), i));
    return p;
}

std::string mime_type(GMimeObject* o) {
    GMimeContentType* t = g_mime_object_get_content_type(o);
    return std::string(g_mime_content_type_get_media_type(t)) + "/" +
           g_mime_content_type_get_media_subtype(t);
}

std::string decoded(GMimeObject* o) {
    GMimeDataWrapper* w = g_mime_part_get_content(GMIME_PART(o));
    GByteArray* array = g_byte_array_new();
    GMimeStream* out = g_mime_stream_mem_new_with_byte_array(array);
    g_mime_data_wrapper_write_to_stream(w, out);
    std::string s(reinterpret_cast<char*>(array->data), array->len);
    g_object_unref(out);
    return s;
}

std::string param(GMimeObject* o, const char* name) {
    const char* v = g_mime_object_get_content_type_parameter(o, name);
    return v ? v : "";
}

std::string disposition_filename(GMimeObject* o) {
    const char* v = g_mime_object_get_content_disposition_parameter(o, "filename");
    return v ? v : "";
}

// The raw bytes of the mixed part's postacert.eml, as carried on the wire.
std::string raw_postacert(std::string_view message, const Parsed& p) {
    std::string boundary = param(p.mixed, "boundary");
    size_t at = message.find("filename=postacert.eml\r\n");
    if (at == std::string::npos) return "";
    at = message.find("\r\n\r\n", at);  // end of the part's header block
    if (at == std::string::npos) return "";
    at += 4;
    size_t end = message.find("\r\n--" + boundary, at);
    return std::string(message.substr(at, end - at));
}

// daticert.xml read with libxml2 (no network, no DTD load), independent of writer formatting.
struct Xml {
    std::unique_ptr<xmlDoc, void (*)(xmlDoc*)> doc{nullptr, xmlFreeDoc};
    xmlNode* root() const { return doc ? xmlDocGetRootElement(doc.get()) : nullptr; }
    static std::string prop(xmlNode* n, const char* name) {
        xmlChar* v = xmlGetProp(n, BAD_CAST name);
        std::string s = v ? reinterpret_cast<char*>(v) : "";
        xmlFree(v);
        return s;
    }
    static std::string text(xmlNode* n) {
        xmlChar* v = xmlNodeGetContent(n);
        std::string s = v ? reinterpret_cast<char*>(v) : "";
        xmlFree(v);
        return s;
    }
    // All elements named `name` anywhere below the root, in document order.
    std::vector<xmlNode*> all(const char* name) const {
        std::vector<xmlNode*> out;
        std::function<void(xmlNode*)> walk = [&](xmlNode* n) {
            for (; n; n = n->next) {
                if (n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, BAD_CAST name) == 0)
                    out.push_back(n);
                walk(n->children);
            }
        };
        walk(root());
        return out;
    }
    std::vector<std::string> texts(const char* name) const {
        std::vector<std::string> out;
        for (auto* n : all(name)) out.push_back(text(n));
        return out;
    }
};

Xml read_xml(const std::string& xml) {
    Xml x;
    x.doc.reset(xmlReadMemory(xml.data(), static_cast<int>(xml.size()), "daticert.xml", nullptr,
                              XML_PARSE_NONET));
    return x;
}

bool dtd_valid(const std::string& xml, const std::string& name) {
    fs::path f = pki().dir / (name + "-daticert.xml");
    write_file(f, xml);
    return run("xmllint --noout --nonet --dtdvalid " PECD_SHARED_DIR
               "/fixtures/real/daticert.dtd " +
               f.string()) == 0;
}

// ---------------------------------------------------------------------------------------------
// The transaction used throughout.

PecTime fixed_time() {
    return PecTime{std::chrono::system_clock::from_time_t(1768478400)};  // 15/01/2026 13:00 +0100
}

Transaction transaction() {
    Transaction t;
    t.time = fixed_time();
    t.identificativo = kId;
    t.original.sender = "mario.rossi@pec.mittente.example";
    t.original.recipients = {
        {"anna.bianchi@pec.provatest.it", RecipientKind::certificato, AddressField::to},
        {"ufficio@esterno.example", RecipientKind::esterno, AddressField::to},
        {"copia@pec.altro.example", RecipientKind::certificato, AddressField::cc},
    };
    t.original.subject = "Fattura n. 12 caffè <b>&\"";
    t.original.message_id = kClientId;
    return t;
}

const std::string kPdfBase64 =
    "JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K\r\n"
    "eJwr5HIK4TI2UzA3NVLIzc/LVKgyMjE2MjBUsDQzUbDQtTQzVzA3NFSwNDNSKErN\r\n"
    "SwEAqPwLPQplbmRzdHJlYW0KZW5kb2JqCg==";

// Submitted message: LF line ends on purpose (Postfix hands LF to content filters).
std::string original_message(bool with_reply_to = false, bool with_id = true) {
    std::string m =
        "Return-Path: <mario.rossi@pec.mittente.example>\r\n"
        "Received: from [192.0.2.7] (client.example [192.0.2.7])\r\n"
        "\tby smtps.pec.mittente.example (Postfix) with ESMTPSA id 4ABC\r\n"
        "\tfor <anna.bianchi@pec.provatest.it>; Thu, 15 Jan 2026 13:00:00 +0100 (CET)\r\n"
        "From: Mario Rossi <mario.rossi@pec.mittente.example>\r\n"
        "To: anna.bianchi@pec.provatest.it,\r\n"
        " ufficio@esterno.example\r\n"
        "Cc: copia@pec.altro.example\r\n";
    if (with_reply_to) m += "Reply-To: segreteria@pec.mittente.example\r\n";
    m += "Subject: =?utf-8?q?Fattura_n=2E_12_caff=C3=A8_=3Cb=3E=26=22?=\r\n";
    if (with_id) m += "Message-ID: " + kClientId + "\r\n";
    m += "Date: Thu, 15 Jan 2026 12:59:58 +0100\r\n"
         "MIME-Version: 1.0\r\n"
         "Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n"
         "\r\n"
         "--XYZ\r\n"
         "Content-Type: text/plain; charset=utf-8\r\n"
         "\r\n"
         "In allegato la fattura.\r\n"
         "--XYZ\r\n"
         "Content-Type: application/pdf; name=\"fattura.pdf\"\r\n"
         "Content-Transfer-Encoding: base64\r\n"
         "Content-Disposition: attachment; filename=\"fattura.pdf\"\r\n"
         "\r\n" +
         kPdfBase64 +
         "\r\n"
         "--XYZ--\r\n";
    return lf(m);
}

std::string crlf(std::string s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')) out += '\r';
        out += s[i];
    }
    return out;
}

class Builders : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        auto loaded = TemplateSet::load(PECD_SOURCE_DIR "/conf/templates");
        ASSERT_TRUE(loaded) << loaded.error().describe();
        templates_ = std::make_shared<TemplateSet>(std::move(*loaded));
        auto ids = IdentificativoGenerator::create(kDomain, "test");
        ASSERT_TRUE(ids) << ids.error().describe();
        ids_ = std::move(*ids);
        ASSERT_NE(pki().key, nullptr);
    }
    static void TearDownTestSuite() {
        std::error_code ec;
        if (!std::getenv("PECD_TEST_KEEP")) fs::remove_all(pki().dir, ec);  // keep to inspect
    }

    MessageBuilder builder() const {
        return MessageBuilder({kGestore, kDomain}, templates_, test_signer, ids_);
    }

    struct Expect {
        std::string name;  // for files and messages
        std::string subject;
        std::string to;
        std::map<std::string, std::string> headers;  // exact values
        std::vector<std::string> absent;
        bool daticert = true;
        bool postacert = false;
    };

    // Everything every message must satisfy; returns the parse for further checks.
    Parsed check_common(const BuiltMessage& built, const Expect& e) {
        EXPECT_TRUE(crlf_only(built.bytes)) << e.name << ": bare LF in output";
        Parsed p = parse(built.bytes);
        EXPECT_TRUE(p.message) << e.name;
        if (!p.message) return p;
        EXPECT_EQ(p.subject(), e.subject) << e.name;
        EXPECT_EQ(p.header("To"), e.to) << e.name;
        EXPECT_EQ(p.header("Date"), fixed_time().rfc5322()) << e.name;
        EXPECT_EQ(p.header("MIME-Version"), "1.0") << e.name;
        EXPECT_FALSE(p.has_header("Sender")) << e.name << ": Sender: is never emitted";
        EXPECT_EQ(p.count_header("Message-ID"), 1) << e.name;
        EXPECT_EQ(p.header("Message-ID"), "<" + built.message_id + ">") << e.name;
        for (const auto& [name, value] : e.headers)
            EXPECT_EQ(p.header(name.c_str()), value) << e.name << " header " << name;
        for (const auto& name : e.absent)
            EXPECT_FALSE(p.has_header(name.c_str())) << e.name << " has " << name;

        EXPECT_TRUE(cms_verifies(built.bytes, e.name)) << e.name << ": openssl cms -verify";

        // multipart/signed { multipart/mixed { alternative, [daticert], [postacert] }, p7s }
        EXPECT_TRUE(p.mixed && mime_type(p.mixed) == "multipart/mixed") << e.name;
        size_t expected_parts = 1 + (e.daticert ? 1 : 0) + (e.postacert ? 1 : 0);
        EXPECT_EQ(p.parts.size(), expected_parts) << e.name;
        if (p.parts.size() != expected_parts) return p;

        GMimeObject* alt = p.parts[0];
        EXPECT_EQ(mime_type(alt), "multipart/alternative") << e.name;
        EXPECT_EQ(g_mime_multipart_get_count(GMIME_MULTIPART(alt)), 2);
        GMimeObject* text = g_mime_multipart_get_part(GMIME_MULTIPART(alt), 0);
        GMimeObject* html = g_mime_multipart_get_part(GMIME_MULTIPART(alt), 1);
        for (auto [part, type] : {std::pair{text, "text/plain"}, std::pair{html, "text/html"}}) {
            EXPECT_EQ(mime_type(part), type) << e.name;
            EXPECT_EQ(g_ascii_strcasecmp(param(part, "charset").c_str(), "iso-8859-1"), 0);
            EXPECT_EQ(g_mime_part_get_content_encoding(GMIME_PART(part)),
                      GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE)
                << e.name;
        }
        std::string body = decoded(text);
        std::string page = decoded(html);
        for (const std::string& s :
             {fixed_time().giorno(), fixed_time().ora(), "(" + fixed_time().zona() + ")"}) {
            EXPECT_NE(body.find(s), std::string::npos) << e.name << " text lacks " << s;
            EXPECT_NE(page.find(s), std::string::npos) << e.name << " html lacks " << s;
        }
        // iso-8859-1: "caffè" is the single byte E8; the HTML escapes the subject's markup.
        EXPECT_NE(body.find("Fattura n. 12 caff\xE8 <b>&\""), std::string::npos) << e.name;
        EXPECT_NE(page.find("Fattura n. 12 caff\xE8 &lt;b&gt;&amp;&quot;"), std::string::npos)
            << e.name;
        EXPECT_EQ(page.find("<b>"), std::string::npos) << e.name << ": unescaped value in HTML";
        for (const char* ref : {"src=", "href=", "http:", "https:", "<script", "<link"})
            EXPECT_EQ(page.find(ref), std::string::npos) << e.name << ": HTML references " << ref;

        if (e.daticert) {
            GMimeObject* x = p.parts[1];
            EXPECT_EQ(mime_type(x), "application/xml") << e.name;
            EXPECT_EQ(disposition_filename(x), "daticert.xml");
            EXPECT_EQ(param(x, "name"), "daticert.xml");
            EXPECT_STREQ(g_mime_object_get_disposition(x), "inline");
            EXPECT_EQ(g_mime_part_get_content_encoding(GMIME_PART(x)),
                      GMIME_CONTENT_ENCODING_BASE64);
            std::string xml = decoded(x);
            EXPECT_TRUE(dtd_valid(xml, e.name)) << e.name << ":\n" << xml;
            EXPECT_TRUE(built.daticert.has_value());
            if (built.daticert) {
                EXPECT_EQ(xml, write_daticert(*built.daticert)) << e.name;
            }
        }
        if (e.postacert) {
            GMimeObject* m = p.parts.back();
            EXPECT_EQ(mime_type(m), "message/rfc822") << e.name;
            EXPECT_EQ(disposition_filename(m), "postacert.eml");
            EXPECT_EQ(param(m, "name"), "postacert.eml");
            EXPECT_STREQ(g_mime_object_get_disposition(m), "inline");
        }
        return p;
    }

    // Fields of daticert.xml as written in the message (read with libxml2).
    static Xml daticert_of(const Parsed& p) { return read_xml(decoded(p.parts[1])); }

    static void check_intestazione(const Xml& x, const Transaction& t) {
        EXPECT_EQ(x.texts("mittente"), std::vector<std::string>{t.original.sender});
        auto dest = x.all("destinatari");
        ASSERT_EQ(dest.size(), t.original.recipients.size());
        for (size_t i = 0; i < dest.size(); ++i) {
            EXPECT_EQ(Xml::text(dest[i]), t.original.recipients[i].address);
            EXPECT_EQ(Xml::prop(dest[i], "tipo"), to_string(t.original.recipients[i].kind));
        }
        EXPECT_EQ(x.texts("risposte"),
                  std::vector<std::string>{t.original.reply_to.value_or(t.original.sender)});
        EXPECT_EQ(x.texts("oggetto"), std::vector<std::string>{t.original.subject});
        EXPECT_EQ(x.texts("gestore-emittente"), std::vector<std::string>{kGestore});
        EXPECT_EQ(x.texts("giorno"), std::vector<std::string>{"15/01/2026"});
        EXPECT_EQ(x.texts("ora"), std::vector<std::string>{"13:00:00"});
        ASSERT_EQ(x.all("data").size(), 1u);
        EXPECT_EQ(Xml::prop(x.all("data")[0], "zona"), "+0100");
        EXPECT_EQ(x.texts("identificativo"), std::vector<std::string>{t.identificativo});
    }

    // From: "Per conto di: <sender>" <posta-certificata@domain> (DECISIONS #1).
    static void expect_on_behalf_from(const Parsed& p, const std::string& sender) {
        InternetAddressList* from = g_mime_message_get_from(p.message.get());
        ASSERT_EQ(internet_address_list_length(from), 1);
        InternetAddress* a = internet_address_list_get_address(from, 0);
        ASSERT_TRUE(INTERNET_ADDRESS_IS_MAILBOX(a));
        EXPECT_STREQ(internet_address_get_name(a), ("Per conto di: " + sender).c_str());
        EXPECT_STREQ(internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(a)),
                     ("posta-certificata@" + kDomain).c_str());
    }

    static std::shared_ptr<const TemplateSet> templates_;
    static std::shared_ptr<IdentificativoGenerator> ids_;
};

std::shared_ptr<const TemplateSet> Builders::templates_;
std::shared_ptr<IdentificativoGenerator> Builders::ids_;

// ---------------------------------------------------------------------------------------------
// #1 busta di trasporto

TEST_F(Builders, BustaTrasporto) {
    Transaction t = transaction();
    t.original.requested_receipt = ReceiptKind::breve;
    std::string original = original_message();
    auto built = builder().busta_trasporto(t, original);
    ASSERT_TRUE(built) << built.error().describe();
    EXPECT_EQ(built->type, MessageType::busta_trasporto);
    EXPECT_EQ(built->message_id, kId);
    Parsed p = check_common(*built, {"busta",
                                     "POSTA CERTIFICATA: " + t.original.subject,
                                     "anna.bianchi@pec.provatest.it, ufficio@esterno.example",
                                     {{"X-Trasporto", "posta-certificata"},
                                      {"X-TipoRicevuta", "breve"},
                                      {"X-Riferimento-Message-ID", kClientId},
                                      {"Message-ID", "<" + kId + ">"},
                                      {"Cc", "copia@pec.altro.example"},
                                      {"Reply-To", t.original.sender},
                                      {"Return-Path", "<mario.rossi@pec.mittente.example>"}},
                                     {"X-Ricevuta"},
                                     true,
                                     true});
    // From: "Per conto di: <sender>" <posta-certificata@domain>, raw on the wire.
    expect_on_behalf_from(p, "mario.rossi@pec.mittente.example");
    // Received and To are inherited byte for byte, folding included.
    EXPECT_NE(built->bytes.find("Received: from [192.0.2.7] (client.example [192.0.2.7])\r\n"
                                "\tby smtps.pec.mittente.example"),
              std::string::npos);
    EXPECT_NE(built->bytes.find("To: anna.bianchi@pec.provatest.it,\r\n ufficio@esterno.example"),
              std::string::npos);
    ASSERT_EQ(p.parts.size(), 3u);

    // postacert.eml: the original, CRLF, with only the Message-ID rewritten.
    std::string expected = crlf(original);
    std::string from = "Message-ID: " + kClientId + "\r\n";
    expected.replace(
        expected.find(from), from.size(),
        "Message-ID: <" + kId + ">\r\nX-Riferimento-Message-ID: " + kClientId + "\r\n");
    EXPECT_EQ(raw_postacert(built->bytes, p), expected);

    Xml x = daticert_of(p);
    ASSERT_NE(x.root(), nullptr);
    EXPECT_EQ(Xml::prop(x.root(), "tipo"), "posta-certificata");
    EXPECT_EQ(Xml::prop(x.root(), "errore"), "nessuno");
    check_intestazione(x, t);
    EXPECT_EQ(x.texts("msgid"), std::vector<std::string>{kClientId});
    ASSERT_EQ(x.all("ricevuta").size(), 1u);
    EXPECT_EQ(Xml::prop(x.all("ricevuta")[0], "tipo"), "breve");
    EXPECT_TRUE(x.all("consegna").empty());
}

// A thread reuses one MIME tree per shape for all its builds (builders.cpp, Skeleton): what one
// message put in it never shows in the next, whatever order the shapes and encodings come in.
TEST_F(Builders, ConsecutiveBuildsOnOneThreadShareNothingButTheirShape) {
    Transaction t = transaction();
    MessageBuilder b = builder();
    std::string eight_bit = original_message();
    eight_bit.replace(eight_bit.find("In allegato la fattura."), 23, "Caff\xc3\xa8 pagato.");
    const std::string seven_bit = original_message();
    auto first = b.busta_trasporto(t, eight_bit);
    auto receipt = b.accettazione(t);  // another shape in between
    auto second = b.busta_trasporto(t, seven_bit);
    ASSERT_TRUE(first && receipt && second);
    Parsed p1 = parse(first->bytes), p2 = parse(second->bytes);
    ASSERT_TRUE(p1.message && p2.message);
    ASSERT_EQ(p1.parts.size(), 3u);
    ASSERT_EQ(p2.parts.size(), 3u);
    auto encoding = [](GMimeObject* part) {
        const char* v = g_mime_object_get_header(part, "Content-Transfer-Encoding");
        return std::string(v ? v : "");
    };
    EXPECT_EQ(encoding(p1.parts[2]), "8bit");
    EXPECT_EQ(encoding(p2.parts[2]), "7bit");
    std::string copy = raw_postacert(second->bytes, p2);
    EXPECT_NE(copy.find("In allegato la fattura."), std::string::npos);
    EXPECT_EQ(copy.find("Caff"), std::string::npos) << "the first original leaked into the second";
    EXPECT_NE(raw_postacert(first->bytes, p1).find("Caff\xc3\xa8 pagato."), std::string::npos);
    // Fresh boundaries every time, in every multipart.
    std::set<std::string> boundaries;
    for (const auto* built : {&*first, &*receipt, &*second}) {
        Parsed p = parse(built->bytes);
        ASSERT_TRUE(p.message && p.mixed);
        EXPECT_TRUE(boundaries.insert(param(p.mixed, "boundary")).second);
        EXPECT_TRUE(boundaries.insert(param(p.parts[0], "boundary")).second);
    }
    // Each message still verifies and carries its own daticert.
    EXPECT_TRUE(cms_verifies(first->bytes, "first"));
    EXPECT_TRUE(cms_verifies(second->bytes, "second"));
}

TEST_F(Builders, BustaKeepsReplyToAndHandlesMissingMessageId) {
    Transaction t = transaction();
    t.original.reply_to = "segreteria@pec.mittente.example";
    auto built = builder().busta_trasporto(t, original_message(true));
    ASSERT_TRUE(built) << built.error().describe();
    Parsed p = parse(built->bytes);
    EXPECT_EQ(p.count_header("Reply-To"), 1);
    EXPECT_EQ(p.header("Reply-To"), "segreteria@pec.mittente.example");
    EXPECT_EQ(p.header("X-TipoRicevuta"), "completa");
    EXPECT_EQ(read_xml(write_daticert(*built->daticert)).texts("risposte"),
              std::vector<std::string>{"segreteria@pec.mittente.example"});

    t.original.reply_to.reset();
    t.original.message_id.reset();
    built = builder().busta_trasporto(t, original_message(false, false));
    ASSERT_TRUE(built) << built.error().describe();
    p = parse(built->bytes);
    EXPECT_FALSE(p.has_header("X-Riferimento-Message-ID"));
    EXPECT_FALSE(built->daticert->msgid.has_value());
    std::string copy = raw_postacert(built->bytes, p);
    EXPECT_NE(copy.find("Message-ID: <" + kId + ">\r\n"), std::string::npos);
    EXPECT_EQ(copy.find("X-Riferimento-Message-ID"), std::string::npos);
    EXPECT_TRUE(cms_verifies(built->bytes, "busta-noid"));

    // The envelope must describe the message it comes with.
    t.original.message_id = "<other@example>";
    auto mismatch = builder().busta_trasporto(t, original_message());
    ASSERT_FALSE(mismatch);
    EXPECT_EQ(mismatch.error().kind, ErrorKind::permanent);
}

// A client S/MIME signature survives inside postacert.eml: the rewrite touches only the top
// header block, outside the signed entity.
TEST_F(Builders, BustaKeepsTheUserSignatureVerifiable) {
    std::string entity =
        "Content-Type: text/plain; charset=us-ascii\r\n\r\nFirmato dal mittente.\r\n";
    auto signed_entity = test_signer(entity);
    ASSERT_TRUE(signed_entity);
    std::string original =
        "From: mario.rossi@pec.mittente.example\r\n"
        "To: anna.bianchi@pec.provatest.it\r\n"
        "Subject: firmato\r\n"
        "Message-ID: " +
        kClientId + "\r\nMIME-Version: 1.0\r\n" + *signed_entity;
    ASSERT_TRUE(cms_verifies(original, "user-signed-original"));
    Transaction t = transaction();
    t.original.subject = "firmato";
    auto built = builder().busta_trasporto(t, original);
    ASSERT_TRUE(built) << built.error().describe();
    Parsed p = parse(built->bytes);
    std::string copy = raw_postacert(built->bytes, p);
    ASSERT_FALSE(copy.empty());
    EXPECT_NE(copy.find("Message-ID: <" + kId + ">"), std::string::npos);
    EXPECT_TRUE(cms_verifies(copy, "user-signed-copy"));
}

// ---------------------------------------------------------------------------------------------
// #2 busta di anomalia

TEST_F(Builders, BustaAnomalia) {
    Transaction t = transaction();
    t.identificativo.clear();  // an anomaly has no PEC identificativo
    std::string received = original_message();
    auto built = builder().busta_anomalia(
        t, received, "la firma digitale del messaggio non risulta attendibile");
    ASSERT_TRUE(built) << built.error().describe();
    EXPECT_EQ(built->type, MessageType::busta_anomalia);
    EXPECT_FALSE(built->daticert.has_value());
    EXPECT_EQ(built->message_id, "client-123@mail.mittente.example");
    Parsed p = check_common(*built, {"anomalia",
                                     "ANOMALIA MESSAGGIO: " + t.original.subject,
                                     "anna.bianchi@pec.provatest.it, ufficio@esterno.example",
                                     {{"X-Trasporto", "errore"},
                                      {"Cc", "copia@pec.altro.example"},
                                      {"Reply-To", t.original.sender},
                                      {"Message-ID", kClientId}},
                                     {"X-Ricevuta", "X-Riferimento-Message-ID", "X-TipoRicevuta"},
                                     false,
                                     true});
    expect_on_behalf_from(p, "mario.rossi@pec.mittente.example");
    ASSERT_EQ(p.parts.size(), 2u);
    EXPECT_EQ(raw_postacert(built->bytes, p), crlf(received));  // unchanged, not rewritten
    std::string body = decoded(g_mime_multipart_get_part(GMIME_MULTIPART(p.parts[0]), 0));
    EXPECT_NE(body.find("non risulta attendibile"), std::string::npos);
}

// A received header block with a line that is no field (8-bit junk): the message is still wrapped
// as it is, the anomaly's fields taken from before that line, To, Reply-To and Message-ID from
// the envelope when they come after it.
TEST_F(Builders, BustaAnomaliaOfAMessageWithAMalformedHeaderLine) {
    Transaction t = transaction();
    t.identificativo.clear();
    std::string received =
        "Received: from mx.esterno.example\r\nFrom: someone@esterno.example\r\n"
        "\xff\xfe not a field\r\nMessage-ID: <after.bad@esterno.example>\r\n"
        "Subject: x\r\n\r\ncorpo\r\n";
    auto built = builder().busta_anomalia(t, received, "messaggio non firmato");
    ASSERT_TRUE(built) << built.error().describe();
    EXPECT_EQ(built->type, MessageType::busta_anomalia);
    EXPECT_FALSE(built->message_id.empty());
    Parsed p = parse(built->bytes);
    EXPECT_EQ(raw_postacert(built->bytes, p), received);  // unchanged
    std::string head = built->bytes.substr(0, built->bytes.find("\r\n\r\n") + 2);
    EXPECT_NE(head.find("\r\nTo: anna.bianchi@pec.provatest.it"), std::string::npos) << head;
    EXPECT_NE(head.find("\r\nReply-To: " + t.original.sender + "\r\n"), std::string::npos) << head;
    EXPECT_NE(head.find("\r\nMessage-ID: <" + built->message_id + ">\r\n"), std::string::npos)
        << head;
    // The fields before the bad line still count (the trace); those after it do not.
    EXPECT_NE(head.find("Received: from mx.esterno.example\r\n"), std::string::npos) << head;
    EXPECT_NE(built->message_id, "after.bad@esterno.example");
}

// ---------------------------------------------------------------------------------------------
// #3-#6, #8-#11: receipts and notices without the original

struct ReceiptCase {
    std::string name;
    std::string subject_prefix;
    std::string x_ricevuta;
    std::string to;  // empty: the original sender
    std::string tipo;
    std::string errore;
    bool verifica_sicurezza = false;
    bool x_mittente = false;
    std::optional<std::string> consegna;
    std::optional<std::string> errore_esteso_has;  // substring of errore-esteso
    std::vector<std::string> ricezione;
    std::string text_has;  // something only this type's text says
};

TEST_F(Builders, ReceiptsAndNotices) {
    const std::string service = "servizio@pec.mittente.example";
    const std::string rcpt = "anna.bianchi@pec.provatest.it";
    Transaction t = transaction();
    MessageBuilder b = builder();
    std::vector<std::pair<ReceiptCase, Result<BuiltMessage>>> cases;
    cases.emplace_back(ReceiptCase{"accettazione",
                                   "ACCETTAZIONE: ",
                                   "accettazione",
                                   "",
                                   "accettazione",
                                   "nessuno",
                                   false,
                                   false,
                                   std::nullopt,
                                   std::nullopt,
                                   {},
                                   "accettato dal sistema"},
                       b.accettazione(t));
    cases.emplace_back(ReceiptCase{"non-accettazione",
                                   "AVVISO DI NON ACCETTAZIONE: ",
                                   "non-accettazione",
                                   "",
                                   "non-accettazione",
                                   "altro",
                                   false,
                                   false,
                                   std::nullopt,
                                   "Bcc non ammesso",
                                   {},
                                   "Bcc non ammesso"},
                       b.non_accettazione(t, "Bcc non ammesso"));
    cases.emplace_back(ReceiptCase{"non-accettazione-virus",
                                   "AVVISO DI NON ACCETTAZIONE PER VIRUS: ",
                                   "non-accettazione",
                                   "",
                                   "non-accettazione",
                                   "virus",
                                   true,
                                   false,
                                   std::nullopt,
                                   "Eicar-Test-Signature",
                                   {},
                                   "Eicar-Test-Signature"},
                       b.non_accettazione_virus(t, "Eicar-Test-Signature"));
    cases.emplace_back(ReceiptCase{"presa-in-carico",
                                   "PRESA IN CARICO: ",
                                   "presa-in-carico",
                                   service,
                                   "presa-in-carico",
                                   "nessuno",
                                   false,
                                   false,
                                   std::nullopt,
                                   std::nullopt,
                                   {rcpt},
                                   kGestore},
                       b.presa_in_carico(t, service, {rcpt}));
    cases.emplace_back(ReceiptCase{"errore-consegna",
                                   "AVVISO DI MANCATA CONSEGNA: ",
                                   "errore-consegna",
                                   "",
                                   "errore-consegna",
                                   "no-dest",
                                   false,
                                   false,
                                   rcpt,
                                   "5.1.1 - " + kGestore + " - indirizzo non valido",
                                   {},
                                   "indirizzo non valido"},
                       b.errore_consegna(t, rcpt, DaticertError::no_dest,
                                         "5.1.1 - " + kGestore + " - indirizzo non valido"));
    cases.emplace_back(ReceiptCase{"preavviso-12h",
                                   "AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: ",
                                   "preavviso-errore-consegna",
                                   "",
                                   "preavviso-errore-consegna",
                                   "altro",
                                   false,
                                   false,
                                   rcpt,
                                   "12 ore",
                                   {},
                                   "prime 12 ore"},
                       b.preavviso_errore_consegna(t, rcpt, TimeoutStage::first_12h));
    cases.emplace_back(ReceiptCase{"preavviso-24h",
                                   "AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: ",
                                   "preavviso-errore-consegna",
                                   "",
                                   "preavviso-errore-consegna",
                                   "altro",
                                   false,
                                   false,
                                   rcpt,
                                   "24 ore",
                                   {},
                                   "esito negativo"},
                       b.preavviso_errore_consegna(t, rcpt, TimeoutStage::final_24h));
    cases.emplace_back(ReceiptCase{"rilevazione-virus",
                                   "PROBLEMA DI SICUREZZA: ",
                                   "rilevazione-virus",
                                   service,
                                   "rilevazione-virus",
                                   "virus",
                                   false,
                                   true,
                                   rcpt,
                                   "Eicar-Test-Signature",
                                   {},
                                   "Eicar-Test-Signature"},
                       b.rilevazione_virus(t, service, rcpt, "Eicar-Test-Signature"));
    cases.emplace_back(ReceiptCase{"errore-consegna-virus",
                                   "AVVISO DI MANCATA CONSEGNA PER VIRUS: ",
                                   "errore-consegna",
                                   "",
                                   "errore-consegna",
                                   "virus",
                                   true,
                                   false,
                                   rcpt,
                                   "Eicar-Test-Signature",
                                   {},
                                   "mancata consegna per virus"},
                       b.errore_consegna_virus(t, rcpt, "Eicar-Test-Signature"));

    std::set<std::string> message_ids;
    for (auto& [c, built] : cases) {
        SCOPED_TRACE(c.name);
        ASSERT_TRUE(built) << built.error().describe();
        EXPECT_NE(built->message_id, kId) << "receipts get a fresh Message-ID";
        EXPECT_TRUE(message_ids.insert(built->message_id).second);
        std::vector<std::string> absent{"X-Trasporto", "X-TipoRicevuta"};
        std::map<std::string, std::string> headers{{"X-Ricevuta", c.x_ricevuta},
                                                   {"X-Riferimento-Message-ID", kClientId},
                                                   {"From", "posta-certificata@" + kDomain}};
        if (c.verifica_sicurezza)
            headers["X-VerificaSicurezza"] = "errore";
        else
            absent.push_back("X-VerificaSicurezza");
        if (c.x_mittente)
            headers["X-Mittente"] = t.original.sender;
        else
            absent.push_back("X-Mittente");
        Parsed p = check_common(
            *built, {c.name, c.subject_prefix + t.original.subject,
                     c.to.empty() ? t.original.sender : c.to, headers, absent, true, false});
        ASSERT_EQ(p.parts.size(), 2u);
        std::string body = decoded(g_mime_multipart_get_part(GMIME_MULTIPART(p.parts[0]), 0));
        EXPECT_NE(body.find(c.text_has), std::string::npos) << body;
        EXPECT_NE(body.find(kId), std::string::npos) << "the identificativo is in the text";

        Xml x = daticert_of(p);
        ASSERT_NE(x.root(), nullptr);
        EXPECT_EQ(Xml::prop(x.root(), "tipo"), c.tipo);
        EXPECT_EQ(Xml::prop(x.root(), "errore"), c.errore);
        check_intestazione(x, t);
        EXPECT_EQ(x.texts("msgid"), std::vector<std::string>{kClientId});
        EXPECT_TRUE(x.all("ricevuta").empty()) << "ricevuta only in busta and consegna";
        EXPECT_EQ(x.texts("consegna"),
                  c.consegna ? std::vector<std::string>{*c.consegna} : std::vector<std::string>{});
        EXPECT_EQ(x.texts("ricezione"), c.ricezione);
        auto esteso = x.texts("errore-esteso");
        if (c.errore_esteso_has) {
            ASSERT_EQ(esteso.size(), 1u);
            EXPECT_NE(esteso[0].find(*c.errore_esteso_has), std::string::npos) << esteso[0];
        } else {
            EXPECT_TRUE(esteso.empty());
        }
    }
}

// The checks above would be worthless if the verifier or the validator accepted anything.
TEST_F(Builders, HarnessDetectsTamperingAndInvalidDaticert) {
    auto built = builder().accettazione(transaction());
    ASSERT_TRUE(built) << built.error().describe();
    ASSERT_TRUE(cms_verifies(built->bytes, "untampered"));
    std::string tampered = built->bytes;
    size_t at = tampered.find("Ricevuta di accettazione");
    ASSERT_NE(at, std::string::npos);
    tampered[at] = 'r';
    EXPECT_FALSE(cms_verifies(tampered, "tampered"));

    Daticert bad = *built->daticert;
    std::string xml = write_daticert(bad);
    ASSERT_TRUE(dtd_valid(xml, "valid"));
    std::string broken = xml;
    broken.replace(broken.find("<mittente>"), 10, "<mittente-x>");
    broken.replace(broken.find("</mittente>"), 11, "</mittente-x>");
    EXPECT_FALSE(dtd_valid(broken, "broken"));
}

TEST_F(Builders, RejectsImpossibleInput) {
    Transaction t = transaction();
    EXPECT_FALSE(builder().errore_consegna(t, "x@y", DaticertError::nessuno, "boh"));
    EXPECT_FALSE(builder().presa_in_carico(t, "", {"x@y"}));
    t.original.sender.clear();
    EXPECT_FALSE(builder().accettazione(t));
    t = transaction();
    t.identificativo = "<" + kId + ">";
    EXPECT_FALSE(builder().accettazione(t));
    t = transaction();
    t.original.recipients.clear();
    EXPECT_FALSE(builder().accettazione(t));
    // A signer failure is reported, not swallowed.
    MessageBuilder broken(
        {kGestore, kDomain}, templates_,
        [](std::string_view) -> Result<std::string> {
            return fail(ErrorKind::transient, "token removed");
        },
        ids_);
    auto r = broken.accettazione(transaction());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, ErrorKind::transient);
    EXPECT_NE(r.error().message.find("token removed"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// #7 avvenuta consegna: completa, breve, sintetica and the To/Cc rule

TEST(ReceiptKindRule, ToAndCcTable) {
    // pec-rules.md §3: To gets what was asked, Cc always sintetica.
    EXPECT_EQ(receipt_kind_for(ReceiptKind::completa, AddressField::to), ReceiptKind::completa);
    EXPECT_EQ(receipt_kind_for(ReceiptKind::completa, AddressField::cc), ReceiptKind::sintetica);
    EXPECT_EQ(receipt_kind_for(ReceiptKind::breve, AddressField::to), ReceiptKind::breve);
    EXPECT_EQ(receipt_kind_for(ReceiptKind::breve, AddressField::cc), ReceiptKind::sintetica);
    EXPECT_EQ(receipt_kind_for(ReceiptKind::sintetica, AddressField::to), ReceiptKind::sintetica);
    EXPECT_EQ(receipt_kind_for(ReceiptKind::sintetica, AddressField::cc), ReceiptKind::sintetica);
}

TEST_F(Builders, AvvenutaConsegnaVariants) {
    auto copy = rewrite_message_id(original_message(), kId);
    ASSERT_TRUE(copy);
    const std::string postacert = copy->bytes;
    struct Case {
        ReceiptKind requested;
        std::string recipient;
        ReceiptKind expected;
        std::string title;
    };
    std::vector<Case> cases{
        {ReceiptKind::completa, "anna.bianchi@pec.provatest.it", ReceiptKind::completa,
         "Ricevuta di avvenuta consegna"},
        {ReceiptKind::breve, "anna.bianchi@pec.provatest.it", ReceiptKind::breve,
         "Ricevuta breve di avvenuta consegna"},
        {ReceiptKind::sintetica, "anna.bianchi@pec.provatest.it", ReceiptKind::sintetica,
         "Ricevuta sintetica di avvenuta consegna"},
        {ReceiptKind::completa, "copia@pec.altro.example", ReceiptKind::sintetica,
         "Ricevuta sintetica di avvenuta consegna"},  // Cc: sintetica whatever was asked
    };
    for (const auto& c : cases) {
        std::string name = "consegna-" + std::string(to_string(c.expected)) + "-" + c.recipient;
        SCOPED_TRACE(name);
        Transaction t = transaction();
        t.original.requested_receipt = c.requested;
        auto built = builder().avvenuta_consegna(t, c.recipient, postacert);
        ASSERT_TRUE(built) << built.error().describe();
        bool with_copy = c.expected != ReceiptKind::sintetica;
        Parsed p = check_common(*built, {name,
                                         "CONSEGNA: " + t.original.subject,
                                         t.original.sender,
                                         {{"X-Ricevuta", "avvenuta-consegna"},
                                          {"X-Riferimento-Message-ID", kClientId},
                                          {"From", "posta-certificata@" + kDomain}},
                                         {"X-Trasporto", "X-VerificaSicurezza"},
                                         true,
                                         with_copy});
        ASSERT_EQ(p.parts.size(), with_copy ? 3u : 2u);
        std::string body = decoded(g_mime_multipart_get_part(GMIME_MULTIPART(p.parts[0]), 0));
        EXPECT_EQ(body.rfind(c.title, 0), 0u) << body;
        Xml x = daticert_of(p);
        EXPECT_EQ(Xml::prop(x.root(), "tipo"), "avvenuta-consegna");
        EXPECT_EQ(Xml::prop(x.root(), "errore"), "nessuno");
        check_intestazione(x, t);
        EXPECT_EQ(x.texts("consegna"), std::vector<std::string>{c.recipient});
        ASSERT_EQ(x.all("ricevuta").size(), 1u);
        EXPECT_EQ(Xml::prop(x.all("ricevuta")[0], "tipo"), to_string(c.expected));
        if (c.expected == ReceiptKind::completa) {
            EXPECT_EQ(raw_postacert(built->bytes, p), postacert);
        }
        if (c.expected == ReceiptKind::breve) {
            std::string carried = raw_postacert(built->bytes, p);
            EXPECT_NE(carried.find("fattura.pdf.hash"), std::string::npos);
            EXPECT_NE(carried.find(sha1_evp(kPdfBase64)), std::string::npos);
            EXPECT_EQ(carried.find(kPdfBase64.substr(0, 40)), std::string::npos);
        }
    }
    // completa without the busta's copy cannot be built.
    EXPECT_FALSE(builder().avvenuta_consegna(transaction(), "anna.bianchi@pec.provatest.it", ""));
}

// ---------------------------------------------------------------------------------------------
// postacert.eml copies

TEST(Postacert, MessageIdRewriteIsHeaderOnly) {
    std::string original =
        lf("From: a@pec.example\r\nMessage-ID:\r\n <folded@client>\r\n"
           "X-Riferimento-Message-ID: <forged@client>\r\nSubject: x\r\n\r\nbody line\r\n");
    auto copy = rewrite_message_id(original, "id.1@pec.example");
    ASSERT_TRUE(copy);
    EXPECT_EQ(copy->original_id, "<folded@client>");
    EXPECT_EQ(copy->bytes,
              "From: a@pec.example\r\nMessage-ID: <id.1@pec.example>\r\n"
              "X-Riferimento-Message-ID: <folded@client>\r\nSubject: x\r\n\r\nbody line\r\n");
    EXPECT_FALSE(rewrite_message_id("not a header\r\n\r\nbody", "id@x"));
}

std::string breve_input() {
    return "From: a@pec.example\r\n"
           "Message-ID: <id.1@pec.example>\r\n"
           "MIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=\"OUT\"\r\n"
           "\r\n"
           "--OUT\r\n"
           "Content-Type: text/plain; charset=utf-8\r\n"
           "\r\n"
           "Testo senza nome: resta.\r\n"
           "--OUT\r\n"
           "Content-Type: application/pdf; name=\"fattura.pdf\"\r\n"
           "Content-Transfer-Encoding: base64\r\n"
           "Content-Disposition: attachment; filename=\"fattura.pdf\"\r\n"
           "\r\n" +
           kPdfBase64 +
           "\r\n"
           "--OUT\r\n"
           "Content-Type: text/csv; name=\"dati.csv\"\r\n"
           "Content-Disposition: inline\r\n"
           "\r\n"
           "a;b\r\n1;2\r\n"
           "--OUT\r\n"
           "Content-Type: message/rfc822\r\n"
           "\r\n"
           "From: x@example\r\nSubject: inoltro\r\n\r\nmessaggio allegato\r\n"
           "\r\n"
           "--OUT--\r\n";
}

TEST(Postacert, BreveHashesAttachmentsAsTransmitted) {
    auto breve = make_breve_copy(breve_input());
    ASSERT_TRUE(breve) << breve.error().describe();
    Parsed p;
    g_mime_init();
    GMimeStream* s = g_mime_stream_mem_new_with_buffer(breve->data(), breve->size());
    GMimeParser* parser = g_mime_parser_new_with_stream(s);
    p.message.reset(g_mime_parser_construct_message(parser, nullptr));
    g_object_unref(parser);
    g_object_unref(s);
    ASSERT_TRUE(p.message);
    EXPECT_TRUE(crlf_only(*breve));
    EXPECT_EQ(p.header("Message-ID"), "<id.1@pec.example>");
    GMimeMultipart* root = GMIME_MULTIPART(g_mime_message_get_mime_part(p.message.get()));
    ASSERT_EQ(g_mime_multipart_get_count(root), 4);
    GMimeObject* text = g_mime_multipart_get_part(root, 0);
    EXPECT_EQ(decoded(text), "Testo senza nome: resta.");

    // Independent digests of the bodies exactly as transmitted (base64 text, no final CRLF,
    // which belongs to the boundary).
    struct Want {
        int index;
        std::string name;
        std::string body;
        std::string disposition;
    };
    std::vector<Want> want{
        {1, "fattura.pdf.hash", kPdfBase64, "attachment"},
        {2, "dati.csv.hash", "a;b\r\n1;2", "inline"},
        {3, "messaggio.eml.hash",
         "From: x@example\r\nSubject: inoltro\r\n\r\nmessaggio allegato\r\n", "attachment"},
    };
    for (const auto& w : want) {
        GMimeObject* part = g_mime_multipart_get_part(root, w.index);
        EXPECT_EQ(mime_type(part), "text/plain") << w.name;
        EXPECT_EQ(disposition_filename(part), w.name);
        EXPECT_EQ(param(part, "name"), w.name);
        EXPECT_STREQ(g_mime_object_get_disposition(part), w.disposition.c_str());
        std::string hash = decoded(part);
        EXPECT_EQ(hash, sha1_evp(w.body)) << w.name;
        EXPECT_TRUE(std::regex_match(hash, std::regex("[0-9a-f]{40}"))) << hash;
    }
}

TEST(Postacert, BreveKeepsSignatureStructureAndOpaqueSmime) {
    std::string sig = "MIIBfakesignaturebytes==";
    std::string signed_msg =
        "From: a@pec.example\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; "
        "micalg=sha-256; boundary=\"S\"\r\n\r\n"
        "--S\r\n"
        "Content-Type: multipart/mixed; boundary=\"M\"\r\n\r\n"
        "--M\r\nContent-Type: text/plain\r\n\r\ncorpo\r\n"
        "--M\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\nQUJD\r\n"
        "--M--\r\n"
        "\r\n--S\r\n"
        "Content-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename=\"smime.p7s\"\r\n\r\n" +
        sig + "\r\n--S--\r\n";
    auto breve = make_breve_copy(signed_msg);
    ASSERT_TRUE(breve) << breve.error().describe();
    EXPECT_NE(breve->find("Content-Type: multipart/signed"), std::string::npos);
    EXPECT_NE(breve->find("filename=\"smime.p7s\""), std::string::npos);
    EXPECT_EQ(breve->find("smime.p7s.hash"), std::string::npos) << "signature part kept";
    EXPECT_NE(breve->find(sig), std::string::npos);
    EXPECT_NE(breve->find("a.pdf.hash"), std::string::npos);
    EXPECT_NE(breve->find(sha1_evp("QUJD")), std::string::npos);

    std::string opaque =
        "From: a@pec.example\r\nMIME-Version: 1.0\r\n"
        "Content-Type: application/x-pkcs7-mime; smime-type=signed-data; name=\"smime.p7m\"\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\r\nMIIBopaque==\r\n";
    auto same = make_breve_copy(opaque);
    ASSERT_TRUE(same);
    EXPECT_EQ(*same, opaque);
}

// The postacert.eml of a real Sogei busta (LF on disk, as published): the breve copy hashes its
// two FatturaPA attachments (7bit and quoted-printable bodies, in canonical CRLF form) and keeps
// the unnamed text part; the completa receipt carries it byte for byte.
std::string real_sogei_postacert() {
    std::string busta = read_file(PECD_SHARED_DIR "/fixtures/real/sogei-busta-breve-2018.eml");
    size_t at = busta.find("filename=\"postacert.eml\"");
    if (at == std::string::npos) return "";
    at = busta.find("\n\n", at) + 2;
    size_t end = busta.find("\n------------=_1544268378-17535-8512--", at);
    if (end == std::string::npos) return "";
    return busta.substr(at, end - at);
}

std::string part_body(const std::string& crlf_message, const std::string& filename,
                      const std::string& boundary) {
    size_t at = crlf_message.find("filename=" + filename + "\r\n");
    if (at == std::string::npos) return "";
    at = crlf_message.find("\r\n\r\n", at) + 4;
    size_t end = crlf_message.find("\r\n--" + boundary, at);
    return crlf_message.substr(at, end - at);
}

TEST(Postacert, BreveOfARealSogeiOriginal) {
    std::string postacert = real_sogei_postacert();
    ASSERT_GT(postacert.size(), 10000u);
    std::string canonical = crlf(postacert);
    const std::string boundary = "----=_Part_115220_-1210040643.1544268377979";
    auto breve = make_breve_copy(postacert);
    ASSERT_TRUE(breve) << breve.error().describe();
    EXPECT_LT(breve->size(), canonical.size() / 4) << "the attachments are gone";
    Parsed p = parse(*breve);
    ASSERT_TRUE(p.message);
    EXPECT_EQ(p.header("Message-ID"), "<opec288.20181208122618.17535.2665.1.3@pcert.sogei.it>");
    GMimeMultipart* root = GMIME_MULTIPART(g_mime_message_get_mime_part(p.message.get()));
    ASSERT_EQ(g_mime_multipart_get_count(root), 3);
    const std::vector<std::string> names{"IT02652600210_00007_MT_002.xml",
                                         "IT02652600210_00007.xml"};
    for (int i = 0; i < 2; ++i) {
        GMimeObject* part = g_mime_multipart_get_part(root, i);
        std::string body = part_body(canonical, names[static_cast<size_t>(i)], boundary);
        ASSERT_GT(body.size(), 100u) << names[static_cast<size_t>(i)];
        EXPECT_EQ(disposition_filename(part), names[static_cast<size_t>(i)] + ".hash");
        EXPECT_EQ(decoded(part), sha1_evp(body)) << names[static_cast<size_t>(i)];
    }
    GMimeObject* text = g_mime_multipart_get_part(root, 2);
    EXPECT_EQ(mime_type(text), "text/plain");
    EXPECT_EQ(disposition_filename(text), "");
}

TEST_F(Builders, CompletaCarriesARealOriginalByteForByte) {
    std::string postacert = real_sogei_postacert();
    ASSERT_FALSE(postacert.empty());
    Transaction t = transaction();
    auto built = builder().avvenuta_consegna(t, "anna.bianchi@pec.provatest.it", postacert);
    ASSERT_TRUE(built) << built.error().describe();
    Parsed p = parse(built->bytes);
    ASSERT_EQ(p.parts.size(), 3u);
    std::string expected = crlf(postacert);
    if (expected.size() < 2 || expected.substr(expected.size() - 2) != "\r\n") expected += "\r\n";
    EXPECT_EQ(raw_postacert(built->bytes, p), expected);
    EXPECT_TRUE(cms_verifies(built->bytes, "completa-real"));
}

// ---------------------------------------------------------------------------------------------
// Identificativo

TEST(Identificativo, UniqueShortAndPlain) {
    auto a = IdentificativoGenerator::create("pec.provatest.it", "mx-1.example");
    auto b = IdentificativoGenerator::create("pec.provatest.it", "mx-2.example");
    ASSERT_TRUE(a && b);
    std::set<std::string> seen;
    const std::regex shape("[A-Za-z0-9.]+@pec\\.provatest\\.it");
    std::vector<std::string> from_threads[4];
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i)
        threads.emplace_back([&, i] {
            for (int k = 0; k < 5000; ++k) from_threads[i].push_back((i % 2 ? **a : **b).next());
        });
    for (auto& th : threads) th.join();
    for (const auto& list : from_threads)
        for (const auto& id : list) {
            EXPECT_LE(id.size(), 100u) << id;
            EXPECT_TRUE(std::regex_match(id, shape)) << id;
            EXPECT_TRUE(seen.insert(id).second) << "duplicate " << id;
        }
    EXPECT_EQ(seen.size(), 20000u);
    EXPECT_NE((*a)->node(), (*b)->node());

    // A domain so long that the worst case would pass 100 characters is refused up front.
    auto long_domain = IdentificativoGenerator::create(std::string(60, 'a') + ".it", "n");
    ASSERT_FALSE(long_domain);
    EXPECT_EQ(long_domain.error().kind, ErrorKind::config);
    EXPECT_FALSE(IdentificativoGenerator::create("bad domain.it", "n"));
}

// ---------------------------------------------------------------------------------------------
// Templates

fs::path copy_templates() {
    fs::path dir = fs::temp_directory_path() / ("pecd-templates-" + std::to_string(getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    for (const auto& entry : fs::directory_iterator(PECD_SOURCE_DIR "/conf/templates"))
        fs::copy_file(entry.path(), dir / entry.path().filename());
    return dir;
}

TEST(Templates, LoadCheckAndRender) {
    auto set = TemplateSet::load(PECD_SOURCE_DIR "/conf/templates");
    ASSERT_TRUE(set) << set.error().describe();
    TemplateValues v{{"giorno", "15/01/2026"},
                     {"ora", "13:00:00"},
                     {"zona", "+0100"},
                     {"gestore", "G"},
                     {"oggetto", "<x>"},
                     {"mittente", "m@x"},
                     {"destinatari", TemplateValue::list({"a@x (posta certificata)", "b@y"})},
                     {"identificativo", "id@x"}};
    auto text = set->render("accettazione", TemplatePart::text, v);
    ASSERT_TRUE(text) << text.error().describe();
    EXPECT_NE(text->find("a@x (posta certificata)\nb@y\n"), std::string::npos);
    EXPECT_NE(text->find("\"<x>\""), std::string::npos);
    auto html = set->render("accettazione", TemplatePart::html, v);
    ASSERT_TRUE(html);
    EXPECT_NE(html->find("a@x (posta certificata)<br>\nb@y"), std::string::npos);
    EXPECT_NE(html->find("&lt;x&gt;"), std::string::npos);
    EXPECT_EQ(html->find("{{"), std::string::npos);

    v.erase("identificativo");
    auto missing = set->render("accettazione", TemplatePart::text, v);
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().kind, ErrorKind::config);
    EXPECT_NE(missing.error().message.find("accettazione.txt"), std::string::npos);
    EXPECT_NE(missing.error().message.find("identificativo"), std::string::npos);
}

TEST(Templates, ConfigErrorsNameTheFile) {
    fs::path dir = copy_templates();
    {
        std::ofstream out(dir / "errore-consegna.html", std::ios::app);
        out << "<p>{{colore}}</p>\n";
    }
    auto unknown = TemplateSet::load(dir);
    ASSERT_FALSE(unknown);
    EXPECT_EQ(unknown.error().kind, ErrorKind::config);
    EXPECT_NE(unknown.error().message.find((dir / "errore-consegna.html").string()),
              std::string::npos)
        << unknown.error().message;
    EXPECT_NE(unknown.error().message.find("{{colore}}"), std::string::npos);

    // A placeholder valid elsewhere is still refused where the builder has no value for it.
    fs::copy_file(PECD_SOURCE_DIR "/conf/templates/errore-consegna.html",
                  dir / "errore-consegna.html", fs::copy_options::overwrite_existing);
    {
        std::ofstream out(dir / "accettazione.txt", std::ios::app);
        out << "{{consegna}}\n";
    }
    auto misplaced = TemplateSet::load(dir);
    ASSERT_FALSE(misplaced);
    EXPECT_NE(misplaced.error().message.find("accettazione.txt"), std::string::npos);

    fs::copy_file(PECD_SOURCE_DIR "/conf/templates/accettazione.txt", dir / "accettazione.txt",
                  fs::copy_options::overwrite_existing);
    {
        std::ofstream out(dir / "presa-in-carico.txt", std::ios::app);
        out << "{{giorno\n";
    }
    auto unterminated = TemplateSet::load(dir);
    ASSERT_FALSE(unterminated);
    EXPECT_NE(unterminated.error().message.find("presa-in-carico.txt"), std::string::npos);

    fs::copy_file(PECD_SOURCE_DIR "/conf/templates/presa-in-carico.txt",
                  dir / "presa-in-carico.txt", fs::copy_options::overwrite_existing);
    ASSERT_TRUE(TemplateSet::load(dir)) << "the restored copy loads again";
    fs::remove(dir / "rilevazione-virus.html");
    auto absent = TemplateSet::load(dir);
    ASSERT_FALSE(absent);
    EXPECT_EQ(absent.error().kind, ErrorKind::config);
    EXPECT_NE(absent.error().message.find("rilevazione-virus.html"), std::string::npos);
    fs::remove_all(dir);
}

}  // namespace
