// The provider end to end on the real stage functions and StageRunners: two providers (alpha,
// beta) with their own spools and mailboxes, outboxes relayed between them. Every message that
// ends in a mailbox or leaves for the internet is read back with read_pec_message and verified
// with the SmimeVerifier against the test PKI and the LDIF index; counts are exact.
#include <gtest/gtest.h>

#include "stages/pec/postacert.hpp"
#include "tests/support/provider_net.hpp"

using namespace pecd;
using namespace pecd::test;
using pec::MessageType;

namespace {

std::vector<MessageType> types(const std::vector<Received>& list) {
    std::vector<MessageType> out;
    for (const auto& r : list) out.push_back(r.info.type);
    std::sort(out.begin(), out.end());
    return out;
}

const Received* find(const std::vector<Received>& list, MessageType type) {
    for (const auto& r : list)
        if (r.info.type == type) return &r;
    return nullptr;
}

// Signed by the named provider, trusted, in the index.
void expect_signed_by(const Received& r, const std::string& provider) {
    EXPECT_TRUE(r.report.ok()) << pec::to_string(r.report.failure) << ": " << r.report.reason;
    EXPECT_EQ(r.report.provider_name, provider);
}

std::string text_of(const Received& r) {
    return r.raw;
}

}  // namespace

TEST(ProviderFlow, CertifiedToCertified) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna");
    const std::string original =
        client_message(mario, anna, "", "Fattura 1", "In allegato la fattura.");
    net.submit("mario", {anna}, original);
    net.run();

    auto sender_box = net.mailbox(net.alpha, mario);
    ASSERT_EQ(types(sender_box),
              (std::vector{MessageType::accettazione, MessageType::avvenuta_consegna}));
    const Received& acc = *find(sender_box, MessageType::accettazione);
    const Received& cons = *find(sender_box, MessageType::avvenuta_consegna);
    expect_signed_by(acc, "Gestore Alpha");
    expect_signed_by(cons, "Gestore Beta");
    ASSERT_TRUE(acc.info.daticert && cons.info.daticert);
    const std::string id = acc.info.daticert->identificativo;
    EXPECT_TRUE(id.ends_with("@pec.alpha.test")) << id;
    EXPECT_EQ(cons.info.daticert->identificativo, id);
    EXPECT_EQ(cons.info.daticert->consegna, anna);
    EXPECT_EQ(cons.info.daticert->ricevuta, pec::ReceiptKind::completa);
    EXPECT_EQ(cons.info.to_addresses, std::vector<std::string>{mario});
    // completa: the original as delivered, with the msgid rewrite
    ASSERT_TRUE(cons.info.original.has_value());
    EXPECT_EQ(cons.info.original->message_id, "<" + id + ">");

    auto anna_box = net.mailbox(net.beta, anna);
    ASSERT_EQ(types(anna_box), std::vector{MessageType::busta_trasporto});
    expect_signed_by(anna_box[0], "Gestore Alpha");
    const auto& d = *anna_box[0].info.daticert;
    EXPECT_EQ(d.identificativo, id);
    EXPECT_EQ(d.mittente, mario);
    ASSERT_EQ(d.destinatari.size(), 1u);
    EXPECT_EQ(d.destinatari[0], (pec::Recipient{anna, pec::RecipientKind::certificato}));
    EXPECT_EQ(anna_box[0].info.from_name, "Per conto di: " + mario);
    // postacert.eml is the original byte for byte but for the msgid rewrite, and the completa
    // receipt carries exactly that copy.
    auto rewritten = pec::rewrite_message_id(original, id);
    ASSERT_TRUE(rewritten.has_value());
    auto carried = provider::extract_postacert(anna_box[0].raw);
    ASSERT_TRUE(carried.has_value()) << carried.error().message;
    EXPECT_EQ(*carried, rewritten->bytes);
    EXPECT_EQ(provider::extract_postacert(cons.raw), rewritten->bytes);

    auto alpha_service = net.mailbox(net.alpha, net.alpha.service());
    ASSERT_EQ(types(alpha_service), std::vector{MessageType::presa_in_carico});
    expect_signed_by(alpha_service[0], "Gestore Beta");
    EXPECT_EQ(alpha_service[0].info.daticert->identificativo, id);
    EXPECT_EQ(alpha_service[0].info.daticert->ricezione, std::vector<std::string>{anna});

    EXPECT_TRUE(net.mailbox(net.beta, net.beta.service()).empty());
    EXPECT_TRUE(net.internet_mail().empty());
    net.expect_clean();
}

TEST(ProviderFlow, CertifiedToEsterno) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), ext = "rossi@example.org";
    net.submit("mario", {ext}, client_message(mario, ext, "", "Preventivo", "Buongiorno."));
    net.run();

    auto sender_box = net.mailbox(net.alpha, mario);
    ASSERT_EQ(types(sender_box), std::vector{MessageType::accettazione});
    ASSERT_EQ(sender_box[0].info.daticert->destinatari.size(), 1u);
    EXPECT_EQ(sender_box[0].info.daticert->destinatari[0].kind, pec::RecipientKind::esterno);

    auto out = net.internet_mail();
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].info.type, MessageType::busta_trasporto);
    expect_signed_by(out[0], "Gestore Alpha");
    EXPECT_EQ(out[0].env.recipients, std::vector<std::string>{ext});
    EXPECT_EQ(out[0].env.sender, mario);
    ASSERT_EQ(out[0].info.daticert->destinatari.size(), 1u);
    EXPECT_EQ(out[0].info.daticert->destinatari[0],
              (pec::Recipient{ext, pec::RecipientKind::esterno}));
    // Nobody takes charge of mail outside PEC: no presa in carico, no receipts.
    EXPECT_TRUE(net.mailbox(net.alpha, net.alpha.service()).empty());
    net.expect_clean();
}

TEST(ProviderFlow, RecipientsAcrossTwoProvidersAndEsterno) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), gino = net.alpha.address("gino"),
                      anna = net.beta.address("anna"), luca = net.beta.address("luca"),
                      ext = "bianchi@example.org";
    std::string msg = client_message(mario, anna + ", " + gino + ", " + ext, luca, "Riunione",
                                     "Ordine del giorno.");
    net.submit("mario", {anna, gino, ext, luca}, msg);
    net.run();

    auto sender_box = net.mailbox(net.alpha, mario);
    ASSERT_EQ(types(sender_box),
              (std::vector{MessageType::accettazione, MessageType::avvenuta_consegna,
                           MessageType::avvenuta_consegna, MessageType::avvenuta_consegna}));
    std::map<std::string, pec::ReceiptKind> kinds;
    std::map<std::string, std::string> signer;
    for (const auto& r : sender_box) {
        if (r.info.type != MessageType::avvenuta_consegna) continue;
        EXPECT_TRUE(r.report.ok()) << r.report.reason;
        kinds[*r.info.daticert->consegna] = *r.info.daticert->ricevuta;
        signer[*r.info.daticert->consegna] = r.report.provider_name;
        // every receipt names all four recipients with their kind
        EXPECT_EQ(r.info.daticert->destinatari.size(), 4u);
    }
    EXPECT_EQ(kinds,
              (std::map<std::string, pec::ReceiptKind>{{anna, pec::ReceiptKind::completa},
                                                       {gino, pec::ReceiptKind::completa},
                                                       {luca, pec::ReceiptKind::sintetica}}));
    EXPECT_EQ(signer[gino], "Gestore Alpha");
    EXPECT_EQ(signer[anna], "Gestore Beta");
    // sintetica carries no original; completa does
    for (const auto& r : sender_box) {
        if (r.info.type == MessageType::avvenuta_consegna) {
            EXPECT_EQ(r.info.original.has_value(), *r.info.daticert->consegna != luca);
        }
    }

    for (auto [node, who] : {std::pair{&net.alpha, gino}, {&net.beta, anna}, {&net.beta, luca}}) {
        auto box = net.mailbox(*node, who);
        ASSERT_EQ(types(box), std::vector{MessageType::busta_trasporto}) << who;
        expect_signed_by(box[0], "Gestore Alpha");
    }
    // One presa in carico per receiving provider, each covering its own recipients.
    auto service = net.mailbox(net.alpha, net.alpha.service());
    ASSERT_EQ(types(service),
              (std::vector{MessageType::presa_in_carico, MessageType::presa_in_carico}));
    std::map<std::string, std::vector<std::string>> covered;
    for (const auto& r : service) covered[r.report.provider_name] = r.info.daticert->ricezione;
    EXPECT_EQ(covered["Gestore Alpha"], std::vector<std::string>{gino});
    EXPECT_EQ(covered["Gestore Beta"], (std::vector<std::string>{anna, luca}));

    auto out = net.internet_mail();
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].env.recipients, std::vector<std::string>{ext});
    auto& dest = out[0].info.daticert->destinatari;
    ASSERT_EQ(dest.size(), 4u);
    for (const auto& r : dest)
        EXPECT_EQ(r.kind,
                  r.address == ext ? pec::RecipientKind::esterno : pec::RecipientKind::certificato)
            << r.address;
    net.expect_clean();
}

TEST(ProviderFlow, FormalErrorsGetOneNonAcceptanceAndNoBusta) {
    struct Case {
        std::string name, envelope_from, extra_headers, reason;
    };
    for (const Case& c : {Case{"bcc", "mario@pec.alpha.test", "Bcc: luca@pec.beta.test\r\n", "Bcc"},
                          Case{"mail-from", "gino@pec.alpha.test", "", "MAIL FROM"}}) {
        SCOPED_TRACE(c.name);
        TwoProviders net;
        const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna");
        std::string msg = client_message(mario, anna, "", "Prova", "Testo.", c.extra_headers);
        std::string user = c.envelope_from.substr(0, c.envelope_from.find('@'));
        net.enqueue(net.alpha, c.envelope_from, {anna}, user, msg);
        net.run();

        const std::string notified = c.envelope_from;  // MAIL FROM, never From/Reply-To
        auto box = net.mailbox(net.alpha, notified);
        ASSERT_EQ(types(box), std::vector{MessageType::non_accettazione});
        expect_signed_by(box[0], "Gestore Alpha");
        const auto& d = *box[0].info.daticert;
        EXPECT_EQ(d.errore, pec::DaticertError::altro);
        ASSERT_TRUE(d.errore_esteso.has_value());
        EXPECT_NE(d.errore_esteso->find(c.reason), std::string::npos) << *d.errore_esteso;
        EXPECT_FALSE(box[0].info.original.has_value());  // MUST NOT carry the original
        EXPECT_TRUE(net.mailbox(net.beta, anna).empty());
        EXPECT_TRUE(net.mailbox(net.beta, net.beta.address("luca")).empty());
        if (notified != mario) {
            EXPECT_TRUE(net.mailbox(net.alpha, mario).empty());
        }
        EXPECT_TRUE(net.internet_mail().empty());
        net.expect_clean();
    }
}

TEST(ProviderFlow, VirusAtSubmissionIsRefusedAndKept) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna");
    std::string msg =
        client_message(mario, anna, "", "Allegato",
                       "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*");
    std::string id = net.submit("mario", {anna}, msg);
    net.run();

    auto box = net.mailbox(net.alpha, mario);
    ASSERT_EQ(types(box), std::vector{MessageType::non_accettazione_virus});
    expect_signed_by(box[0], "Gestore Alpha");
    EXPECT_EQ(box[0].info.daticert->errore, pec::DaticertError::virus);
    EXPECT_EQ(box[0].info.headers.x_verifica_sicurezza, "errore");
    EXPECT_EQ(read_file(net.alpha.virus_store() / (id + ".eml")), msg);
    EXPECT_TRUE(net.mailbox(net.beta, anna).empty());
    EXPECT_TRUE(net.internet_mail().empty());
    net.expect_clean();
}

TEST(ProviderFlow, VirusInValidBustaIsReportedBackToTheSender) {
    // alpha does not scan, beta does: beta finds the virus in alpha's busta.
    TwoProviders net(NodeOptions{"none", ""}, NodeOptions{"eicar", ""});
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna"),
                      luca = net.beta.address("luca");
    net.submit(
        "mario", {anna, luca},
        client_message(mario, anna + ", " + luca, "", "Virus",
                       "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"));
    net.run();

    EXPECT_TRUE(net.mailbox(net.beta, anna).empty());
    EXPECT_TRUE(net.mailbox(net.beta, luca).empty());
    size_t stored = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(net.beta.virus_store())) ++stored;
    EXPECT_EQ(stored, 1u);
    // one rilevazione virus per recipient, to alpha's service mailbox
    auto service = net.mailbox(net.alpha, net.alpha.service());
    ASSERT_EQ(types(service),
              (std::vector{MessageType::rilevazione_virus, MessageType::rilevazione_virus}));
    std::set<std::string> flagged;
    for (const auto& r : service) {
        expect_signed_by(r, "Gestore Beta");
        flagged.insert(*r.info.daticert->consegna);
    }
    EXPECT_EQ(flagged, (std::set<std::string>{anna, luca}));
    // alpha turns each into an avviso di mancata consegna per virus for mario
    auto box = net.mailbox(net.alpha, mario);
    ASSERT_EQ(types(box),
              (std::vector{MessageType::accettazione, MessageType::errore_consegna_virus,
                           MessageType::errore_consegna_virus}));
    for (const auto& r : box) {
        expect_signed_by(r, "Gestore Alpha");
        if (r.info.type == MessageType::errore_consegna_virus) {
            EXPECT_EQ(r.info.daticert->errore, pec::DaticertError::virus);
        }
    }
    net.expect_clean();
}

TEST(ProviderFlow, OrdinaryMailToCertifiedMailboxBecomesAnomaly) {
    TwoProviders net;
    const std::string anna = net.beta.address("anna"), ext = "spam@example.org";
    std::string msg = client_message(ext, anna, "", "Offerta", "Messaggio ordinario.");
    net.enqueue(net.beta, ext, {anna}, "", msg);
    net.run();

    auto box = net.mailbox(net.beta, anna);
    ASSERT_EQ(types(box), std::vector{MessageType::busta_anomalia});
    expect_signed_by(box[0], "Gestore Beta");
    EXPECT_EQ(box[0].info.headers.x_trasporto, "errore");
    EXPECT_EQ(box[0].info.from_name, "Per conto di: " + ext);
    ASSERT_TRUE(box[0].info.original.has_value());
    EXPECT_EQ(box[0].info.original->subject, "Offerta");
    EXPECT_NE(text_of(box[0]).find("no_signature"), std::string::npos);
    EXPECT_TRUE(net.mailbox(net.alpha, net.alpha.service()).empty());
    EXPECT_TRUE(net.internet_mail().empty());
    net.expect_clean();
}

TEST(ProviderFlow, TamperedBustaBecomesAnomalyWithBadSignature) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna");
    net.submit("mario", {anna}, client_message(mario, anna, "", "Contratto", "Importo: 100 euro."));
    // Hold alpha's busta in the outbox, change one byte of the certified content, relay it.
    net.run([](const spool::Envelope& env) {
        return env.sender.empty() || env.sender.starts_with("posta-");
    });
    auto held = net.held_in_outbox(net.alpha);
    ASSERT_EQ(held.size(), 1u);
    fs::path file = held[0];
    std::string bytes = read_file(file);
    size_t at = bytes.find("Importo: 100 euro.");
    ASSERT_NE(at, std::string::npos);
    bytes[at + 9] = '9';  // 100 -> 900
    write_file(file, bytes);
    net.run();

    auto box = net.mailbox(net.beta, anna);
    ASSERT_EQ(types(box), std::vector{MessageType::busta_anomalia});
    expect_signed_by(box[0], "Gestore Beta");
    EXPECT_NE(box[0].raw.find("bad_signature"), std::string::npos);
    // Not a valid busta: no presa in carico, no delivery receipt.
    EXPECT_TRUE(net.mailbox(net.alpha, net.alpha.service()).empty());
    EXPECT_EQ(types(net.mailbox(net.alpha, mario)), std::vector{MessageType::accettazione});
    net.expect_clean();
}

TEST(ProviderFlow, UnknownMailboxGetsNoDestNotice) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), nobody = net.beta.address("nessuno"),
                      anna = net.beta.address("anna");
    net.submit("mario", {nobody, anna},
               client_message(mario, nobody + ", " + anna, "", "Prova", "Testo."));
    net.run();

    auto box = net.mailbox(net.alpha, mario);
    ASSERT_EQ(types(box), (std::vector{MessageType::accettazione, MessageType::avvenuta_consegna,
                                       MessageType::errore_consegna}));
    const Received& err = *find(box, MessageType::errore_consegna);
    expect_signed_by(err, "Gestore Beta");
    const auto& d = *err.info.daticert;
    EXPECT_EQ(d.consegna, nobody);
    EXPECT_EQ(d.errore, pec::DaticertError::no_dest);
    EXPECT_EQ(d.errore_esteso, "5.1.1 - Gestore Beta S.p.A. - indirizzo non valido");
    EXPECT_EQ(find(box, MessageType::avvenuta_consegna)->info.daticert->consegna, anna);
    // the presa in carico covers both: the receipt point took charge before delivery
    auto service = net.mailbox(net.alpha, net.alpha.service());
    ASSERT_EQ(service.size(), 1u);
    EXPECT_EQ(service[0].info.daticert->ricezione, (std::vector<std::string>{nobody, anna}));
    net.expect_clean();
}

TEST(ProviderFlow, RejectPolicyQuarantinesOrdinaryMail) {
    TwoProviders net({}, NodeOptions{"eicar", "[policy]\nordinary_mail.pec.beta.test = reject\n"});
    const std::string anna = net.beta.address("anna"), ext = "spam@example.org";
    std::string id =
        net.enqueue(net.beta, ext, {anna}, "", client_message(ext, anna, "", "Offerta", "x"));
    net.run();
    EXPECT_TRUE(net.mailbox(net.beta, anna).empty());
    auto q = net.leftovers(net.beta, spool::Area::quarantine);
    EXPECT_EQ(q, (std::vector<std::string>{"verify/" + id, "verify/" + id + ".reason"}));
    std::string reason =
        read_file(net.beta.spool.area_dir(spool::Area::quarantine, "verify") / (id + ".reason"));
    EXPECT_NE(reason.find("ordinary_mail"), std::string::npos) << reason;
}

TEST(ProviderFlow, BreveRequestedGivesBreveToPrimaryAndSinteticaToCopy) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna"),
                      luca = net.beta.address("luca");
    std::string msg = "From: " + mario + "\r\nTo: " + anna + "\r\nCc: " + luca +
                      "\r\nSubject: Fattura\r\nMessage-ID: <breve.1@client.test>\r\n"
                      "X-TipoRicevuta: breve\r\nMIME-Version: 1.0\r\n"
                      "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
                      "--b1\r\nContent-Type: text/plain\r\n\r\nIn allegato.\r\n"
                      "--b1\r\nContent-Type: application/pdf; name=\"fattura.pdf\"\r\n"
                      "Content-Transfer-Encoding: base64\r\n"
                      "Content-Disposition: attachment; filename=\"fattura.pdf\"\r\n\r\n"
                      "JVBERi0xLjQKJcfsj6IKJSVFT0YK\r\n--b1--\r\n";
    net.submit("mario", {anna, luca}, msg);
    net.run();

    std::map<std::string, const Received*> by_recipient;
    auto box = net.mailbox(net.alpha, mario);
    ASSERT_EQ(box.size(), 3u);
    for (const auto& r : box)
        if (r.info.type == MessageType::avvenuta_consegna)
            by_recipient[*r.info.daticert->consegna] = &r;
    ASSERT_EQ(by_recipient.size(), 2u);
    const Received& breve = *by_recipient[anna];
    EXPECT_EQ(breve.info.daticert->ricevuta, pec::ReceiptKind::breve);
    ASSERT_TRUE(breve.info.original.has_value());
    EXPECT_EQ(breve.info.original->hash_parts, 1u);  // fattura.pdf became fattura.pdf.hash
    EXPECT_TRUE(breve.report.ok()) << breve.report.reason;
    const Received& sintetica = *by_recipient[luca];
    EXPECT_EQ(sintetica.info.daticert->ricevuta, pec::ReceiptKind::sintetica);
    EXPECT_FALSE(sintetica.info.original.has_value());
    // the busta itself asks for breve (X-TipoRicevuta and daticert)
    auto got = net.mailbox(net.beta, anna);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].info.tipo_ricevuta, pec::ReceiptKind::breve);
    EXPECT_EQ(got[0].info.daticert->ricevuta, pec::ReceiptKind::breve);
    net.expect_clean();
}
